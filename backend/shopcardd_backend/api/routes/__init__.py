"""One router per resource: deals, claims, keys, health."""
