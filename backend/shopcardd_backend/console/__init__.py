"""The merchant's console: server-rendered pages at ``/console`` on the API process.

FastAPI routes render Jinja2 templates; htmx (vendored, no build step) refreshes the live deal
page. Every page is a thin adapter over the same use cases as the API (``deals.py``,
``merchants.py``, ``devices.py``, ``stats.py``); ``sessions.py`` signs the merchant in.
"""
