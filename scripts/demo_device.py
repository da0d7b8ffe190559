"""Demo chapter: a simulated counter device redeems, refuses a second use, and spots a forgery.

The counter runs exactly as on a Pi, except that its camera is a folder of image files
(``[camera] source = "files"``) and its LEDs are gpiozero's mock pins
(``GPIOZERO_PIN_FACTORY=mock``). Uses the keys the voucher chapter made
(``keys_dir``, ``kid``, ``merchant``, ``jwks``); hands on ``device_config``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from demo import Demo, DemoFailed

DEAL = "d-flat-white"


def _present(demo: Demo, config: Path, camera: Path, *images: Path) -> list[str]:
    """Hold ``images`` in front of the simulated camera, run the counter, return each verdict."""
    shutil.rmtree(camera, ignore_errors=True)
    camera.mkdir()
    for number, image in enumerate(images, 1):
        shutil.copy(image, camera / f"{number:02d}-{image.name}")
    proc = demo.run("shopcardd-device", "run", "--config", config.relative_to(demo.out), show=False)
    lines = proc.stdout.splitlines()
    for line in lines:
        print("  " + line)
    return [line.split()[0] for line in lines]


def _expect(demo: Demo, seen: list[str], wanted: list[str], stories: list[str]) -> None:
    if seen != wanted:
        raise DemoFailed(f"the counter said {seen}, expected {wanted}")
    for verdict, story in zip(seen, stories, strict=True):
        (demo.ok if verdict == "accepted" else demo.refused)(f"{story} -> {verdict}")


def run(demo: Demo) -> None:
    demo.chapter("The counter device: scan, verify offline, record, signal")
    keys_dir, kid = Path(str(demo.facts["keys_dir"])), str(demo.facts["kid"])
    merchant, jwks = str(demo.facts["merchant"]), Path(str(demo.facts["jwks"]))
    counter = demo.out / "counter"
    counter.mkdir(exist_ok=True)
    demo.env["GPIOZERO_PIN_FACTORY"] = "mock"  # gpiozero's own mock pins stand in for the LEDs

    demo.say("A customer's voucher, and a forgery signed with a key that merely claims the same kid:")
    token = demo.run(
        "shopcardd-provision", "issue", "--key", keys_dir / f"{kid}.private.pem", "--kid", kid,
        "--deal", DEAL, "--merchant", merchant, "--user", "u-ada", "--ttl", "86400", show=False,
    ).stdout.strip()  # fmt: skip
    demo.run("shopcardd-provision", "qr", "-", "--out", "counter/voucher.png", stdin=token)
    demo.run("shopcardd-provision", "keygen", "--kid", kid, "--out", counter / "forger", show=False)
    forged = demo.run(
        "shopcardd-provision", "issue", "--key", counter / "forger" / f"{kid}.private.pem", "--kid", kid,
        "--deal", DEAL, "--merchant", merchant, "--user", "u-mallory", "--ttl", "86400", show=False,
    ).stdout.strip()  # fmt: skip
    demo.run("shopcardd-provision", "qr", "-", "--out", "counter/forged.png", stdin=forged)

    config = counter / "device.toml"
    config.write_text(
        f"""\
device_id = "counter-1"
merchant_id = "{merchant}"
data_dir = "data"                  # the ledger: counter/data/ledger.sqlite3
keyset = "{jwks}"

[camera]
source = "files"                   # a folder of images stands in for the Pi camera
path = "camera"

[gpio]
signal_seconds = 0.3
"""
    )
    demo.facts["device_config"] = config
    rel = config.relative_to(demo.out)
    demo.say(f"\nThe counter's configuration ({rel}):")
    for line in config.read_text().splitlines():
        demo.say("  " + line)
    camera = counter / "camera"

    demo.say("\nThe customer shows the voucher at the counter:")
    seen = _present(demo, config, camera, counter / "voucher.png")
    _expect(demo, seen, ["accepted"], ["genuine voucher, first use"])

    demo.say("\nThe same voucher again, then the forgery:")
    seen = _present(demo, config, camera, counter / "voucher.png", counter / "forged.png")
    _expect(demo, seen, ["already_redeemed", "bad_signature"], ["second use", "forged voucher"])

    demo.say("\nA point-of-sale script can ask the same questions, one JSON line per voucher:")
    proc = demo.run(
        "shopcardd-device", "verify", "--config", rel, "--json", "--dry-run", "counter/voucher.png", expect=1
    )
    if json.loads(proc.stdout)["result"] != "already_redeemed":
        raise DemoFailed("verify did not see the redemption in the ledger")

    demo.say("\nWhat the ledger holds (every rejection is kept too, with its reason):")
    status = json.loads(demo.run("shopcardd-device", "status", "--config", rel, "--json", show=False).stdout)
    demo.say(
        f"  accepted {status['accepted']}, rejected {status['rejected']}, "
        f"{status['unsynced']} rows waiting for sync, keys {[k['kid'] for k in status['keys']]}"
    )
    if status["accepted"] != 1:
        raise DemoFailed(f"the ledger should hold one redemption, not {status['accepted']}")
    demo.ok("one redemption recorded, durably, before the green light")
