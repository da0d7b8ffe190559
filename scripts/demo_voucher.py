"""Demo chapter 1: a signing key, a voucher, its QR code, and a forgery refused."""

from __future__ import annotations

import base64
import json

from demo import Demo, DemoFailed

MERCHANT = "m-corner-cafe"


def run(demo: Demo) -> None:
    from shopcardd_device.decoders.zxing import ZxingDecoder
    from shopcardd_device.frames.files import load_gray
    from shopcardd_voucher import KeySet, Reason, verify

    demo.chapter("1. The voucher: sign, render, verify, refuse a forgery")
    demo.say("The backend signs vouchers with a private key; counters hold only the public key set.")
    demo.run("shopcardd-provision", "keygen", "--alg", "EdDSA", "--kid", "k1", "--out", "keys")
    keys_dir = demo.out / "keys"
    demo.facts.update(keys_dir=keys_dir, kid="k1", merchant=MERCHANT, jwks=keys_dir / "jwks.json")

    token = demo.run(
        "shopcardd-provision",
        "issue",
        "--key",
        "keys/k1.private.pem",
        "--kid",
        "k1",
        "--deal",
        "d-flatwhite",
        "--merchant",
        MERCHANT,
        "--user",
        "u-alice",
        "--ttl",
        "86400",
    ).stdout.strip()
    (demo.out / "voucher.txt").write_text(token + "\n")
    demo.facts["voucher"] = token
    demo.say(f"A voucher is {len(token)} characters: short enough for a small QR code.")
    demo.run("shopcardd-provision", "qr", token, "--out", "voucher.png")
    with ZxingDecoder() as decoder:
        scanned = decoder.decode(load_gray(demo.out / "voucher.png"))
    if scanned != [token]:
        raise DemoFailed(f"voucher.png does not read back as the voucher: {scanned}")
    demo.ok("voucher.png reads back as the same voucher (zxing-cpp, as the counter decodes it)")
    demo.facts["voucher_png"] = demo.out / "voucher.png"

    keys = KeySet.load(keys_dir / "jwks.json")
    verdict = verify(scanned[0], keys, merchant=MERCHANT)
    if verdict.reason is not Reason.ACCEPTED:
        raise DemoFailed(f"the genuine voucher was refused: {verdict.reason}")
    assert verdict.voucher is not None
    demo.ok(f"genuine voucher -> {verdict.reason} (voucher {verdict.voucher.voucher_id})")

    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["deal"] = "d-free-lunch"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).rstrip(b"=")
    forged = f"{header}.{forged_payload.decode()}.{signature}"
    (demo.out / "forged.txt").write_text(forged + "\n")
    demo.facts["forged_voucher"] = forged
    verdict = verify(forged, keys, merchant=MERCHANT)
    if verdict.reason is Reason.ACCEPTED:
        raise DemoFailed("a forged voucher was accepted")
    demo.refused(f"the same voucher with its deal changed to 'd-free-lunch' -> {verdict.reason}")
