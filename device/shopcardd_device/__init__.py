"""The ShopCardd counter device: scan a voucher's QR code, verify it offline, record, signal.

Nothing here touches hardware, files or the network at import; ``cli.main`` builds it all.
"""
