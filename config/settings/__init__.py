"""Settings live in base.py (everything, from the environment); test.py sets test defaults."""
