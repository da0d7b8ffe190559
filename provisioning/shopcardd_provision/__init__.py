"""Provisioning: voucher signing keys, manual issue, QR rendering (device enrolment later)."""
