"""The document store: deals, merchants, vouchers (see ``base.py``)."""
