"""Makes and judges models: contract, data intake, tuning, gate, registry, retrain cycle, CLI."""
