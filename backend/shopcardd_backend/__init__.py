"""The ShopCardd backend: the claim API and its queue workers."""
