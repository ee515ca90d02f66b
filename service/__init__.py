"""The BentoML service that serves the current champion."""
