"""Demo: a synthetic loan-approval stream with concept changes, and traffic to a running service."""
