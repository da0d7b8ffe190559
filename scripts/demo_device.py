"""Demo chapter 2: a simulated counter device redeems, refuses a second use, and spots a forgery.

The counter runs exactly as on a Pi, except that its camera is a folder of image files
(``[camera] source = "files"``) and its LEDs are gpiozero's mock pins
(``GPIOZERO_PIN_FACTORY=mock``). Uses what the voucher chapter made (``keys_dir``, ``kid``,
``merchant``, ``voucher_png``); hands on ``device_config``. Every command runs in the
demo's folder, so the paths it shows are relative to that folder, as in chapter 1.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from demo import Demo, DemoFailed

FORGED_DEAL = "d-free-lunch"


def _present(demo: Demo, config: str, camera: Path, *images: Path) -> list[str]:
    """Hold ``images`` in front of the simulated camera, run the counter, return each verdict."""
    shutil.rmtree(camera, ignore_errors=True)
    camera.mkdir()
    names = [f"{number:02d}-{image.name}" for number, image in enumerate(images, 1)]
    for name, image in zip(names, images, strict=True):
        shutil.copy(image, camera / name)
    demo.say(f"{_relative(demo, camera)}/ now holds {', '.join(names)}:")
    proc = demo.run("shopcardd-device", "run", "--config", config, show=False)
    lines = proc.stdout.splitlines()  # the verdict lines; the JSON log on stderr is left out
    for line in lines:
        print("  " + line)
    return [line.split()[0] for line in lines]


def _expect(demo: Demo, seen: list[str], wanted: list[str], stories: list[str]) -> None:
    if seen != wanted:
        raise DemoFailed(f"the counter said {seen}, expected {wanted}")
    for verdict, story in zip(seen, stories, strict=True):
        (demo.ok if verdict == "accepted" else demo.refused)(f"{story} -> {verdict}")


def _relative(demo: Demo, path: Path) -> str:
    """``path`` as a command run in the demo's folder names it."""
    return str(path.relative_to(demo.out))


def run(demo: Demo) -> None:
    demo.chapter("2. The counter device: scan, verify offline, record, signal")
    demo.say(f"Commands run in the demo's folder ({demo.out}); the paths they name are relative to it.")
    demo.say("Off a Pi, gpiozero's mock pins stand in for the LEDs: export GPIOZERO_PIN_FACTORY=mock.")
    keys, kid = _relative(demo, Path(str(demo.facts["keys_dir"]))), str(demo.facts["kid"])
    merchant, voucher = str(demo.facts["merchant"]), Path(str(demo.facts["voucher_png"]))
    counter = demo.out / "counter"
    counter.mkdir(exist_ok=True)
    demo.env["GPIOZERO_PIN_FACTORY"] = "mock"

    demo.say(f"The customer brings {voucher.name} from chapter 1. A forger signs a voucher for a free lunch")
    demo.say(f"with a key of their own that merely claims the same kid ({kid}):")
    demo.run("shopcardd-provision", "keygen", "--kid", kid, "--out", "counter/forger")
    forged = demo.run(
        "shopcardd-provision", "issue", "--key", f"counter/forger/{kid}.private.pem", "--kid", kid,
        "--deal", FORGED_DEAL, "--merchant", merchant, "--user", "u-mallory", "--ttl", "86400",
    ).stdout.strip()  # fmt: skip
    demo.run("shopcardd-provision", "qr", forged, "--out", "counter/forged.png")

    config = counter / "device.toml"
    keyset = f'keyset = "../{keys}/jwks.json"'.ljust(34)
    config.write_text(
        f"""\
device_id = "counter-1"
merchant_id = "{merchant}"
data_dir = "data"                  # relative to this file's folder: counter/data/
{keyset} # chapter 1's public key set: {keys}/jwks.json

[camera]
source = "files"                   # a folder of images stands in for the Pi camera
path = "camera"

[gpio]
signal_seconds = 0.3
"""
    )
    demo.facts["device_config"] = config
    rel = _relative(demo, config)
    demo.say(f"\nThe counter's configuration ({rel}):")
    for line in config.read_text().splitlines():
        demo.say("  " + line)
    camera = counter / "camera"

    demo.say("\nThe customer shows the voucher at the counter.")
    seen = _present(demo, rel, camera, voucher)
    _expect(demo, seen, ["accepted"], ["genuine voucher, first use"])

    demo.say("\nThe same voucher again, then the forgery.")
    seen = _present(demo, rel, camera, voucher, counter / "forged.png")
    _expect(demo, seen, ["already_redeemed", "bad_signature"], ["second use", "forged voucher"])

    demo.say("\nA point-of-sale script can ask the same questions, one JSON line per voucher:")
    proc = demo.run(
        "shopcardd-device", "verify", "--config", rel, "--json", "--dry-run", voucher.name, expect=1
    )
    if json.loads(proc.stdout)["result"] != "already_redeemed":
        raise DemoFailed("verify did not see the redemption in the ledger")

    demo.say("\nWhat the ledger holds (every rejection is counted too, by its reason):")
    status = json.loads(demo.run("shopcardd-device", "status", "--config", rel, "--json").stdout)
    rejected = ", ".join(f"{count} {reason}" for reason, count in status["rejected"].items()) or "none"
    demo.say(
        f"  that is: {status['accepted']} redeemed; rejected: {rejected}; "
        f"{status['unsynced']} waiting for sync; keys: {', '.join(k['kid'] for k in status['keys'])}"
    )
    if status["accepted"] != 1:
        raise DemoFailed(f"the ledger should hold one redemption, not {status['accepted']}")
    demo.ok("one redemption recorded, durably, before the green light")
