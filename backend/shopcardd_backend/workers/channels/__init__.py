"""The notify worker's channels to the customer: one adapter per file, the port in ``base.py``."""
