"""The ShopCardd counter device: scan a voucher's QR code, verify it offline, record, signal."""
