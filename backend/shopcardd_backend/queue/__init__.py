"""How events leave the outbox: the RabbitMQ adapter, or in-process without a broker (``base.py``)."""
