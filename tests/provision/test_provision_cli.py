"""`shopcardd-provision` as an operator uses it: keys on disk, a voucher on stdout, a QR image."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import zxingcpp
from PIL import Image

import shopcardd_voucher.keyfiles
from shopcardd_provision.keys import keygen
from shopcardd_voucher import ALGORITHMS, KeySet, Reason, verify
from shopcardd_voucher.keyfiles import KeyFolderError

PROVISION = str(Path(sys.executable).with_name("shopcardd-provision"))


def provision(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([PROVISION, *map(str, args)], capture_output=True, text=True)
    assert (result.returncode == 0) is ok, result.stderr
    return result


def issue_voucher(private_key: Path, kid: str = "k1") -> str:
    """A voucher for deal d1 at merchant m1, as an operator issues one by hand."""
    args = ["--deal", "d1", "--merchant", "m1", "--user", "u1", "--ttl", "600"]
    return provision("issue", "--key", private_key, "--kid", kid, *args).stdout.strip()


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_keygen_issue_and_verify(tmp_path: Path, alg: str) -> None:
    provision("keygen", "--alg", alg, "--kid", "k1", "--out", tmp_path / "keys")
    private = tmp_path / "keys" / "k1.private.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    keys = KeySet.load(tmp_path / "keys" / "jwks.json")
    assert [(k.kid, k.alg) for k in keys] == [("k1", alg)]

    token = issue_voucher(private)
    verdict = verify(token, keys, merchant="m1")
    assert verdict.reason is Reason.ACCEPTED
    assert verdict.voucher is not None and verdict.voucher.deal == "d1"


def test_keygen_adds_keys_and_never_overwrites(tmp_path: Path) -> None:
    provision("keygen", "--kid", "k1", "--out", tmp_path)
    before = (tmp_path / "k1.private.pem").read_bytes()
    provision("keygen", "--alg", "ES256", "--kid", "k2", "--out", tmp_path)
    assert KeySet.load(tmp_path / "jwks.json").kids == ["k1", "k2"]

    again = provision("keygen", "--kid", "k1", "--out", tmp_path, ok=False)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert (tmp_path / "k1.private.pem").read_bytes() == before
    assert KeySet.load(tmp_path / "jwks.json").kids == ["k1", "k2"]


def test_keygen_writes_0600_whatever_the_umask(tmp_path: Path) -> None:
    result = subprocess.run(
        [PROVISION, "keygen", "--kid", "k1", "--out", str(tmp_path / "keys")],
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.umask(0),
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((tmp_path / "keys" / "k1.private.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700, "no one else may swap the key"
    assert stat.S_IMODE((tmp_path / "keys" / "jwks.json").stat().st_mode) == 0o644


def test_rotation_keeps_vouchers_of_the_old_key_verifiable(tmp_path: Path) -> None:
    provision("keygen", "--kid", "k1", "--out", tmp_path)
    old = issue_voucher(tmp_path / "k1.private.pem")
    provision("keygen", "--alg", "ES256", "--kid", "k2", "--out", tmp_path)
    new = issue_voucher(tmp_path / "k2.private.pem", kid="k2")
    keys = KeySet.load(tmp_path / "jwks.json")
    assert [verify(token, keys, merchant="m1").reason for token in (old, new)] == [Reason.ACCEPTED] * 2


def test_keygens_at_the_same_time_all_end_up_in_the_key_set(tmp_path: Path) -> None:
    kids = [f"k{i}" for i in range(6)]
    start = threading.Barrier(len(kids))

    def make(kid: str) -> None:
        start.wait()
        keygen("RS256", kid, tmp_path)  # slow to generate: the read-modify-write windows overlap

    threads = [threading.Thread(target=make, args=(kid,)) for kid in kids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(KeySet.load(tmp_path / "jwks.json").kids) == kids


def test_a_key_set_that_cannot_be_written_leaves_no_private_key_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(path: Path, text: str) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(shopcardd_voucher.keyfiles, "write_atomically", disk_full)
        with pytest.raises(OSError, match="No space"):
            keygen("EdDSA", "k1", tmp_path)
    assert not (tmp_path / "k1.private.pem").exists()
    keygen("EdDSA", "k1", tmp_path)  # the retry is not blocked by a half-made key
    assert KeySet.load(tmp_path / "jwks.json").kids == ["k1"]


def test_keygen_into_something_that_is_not_a_folder_says_so(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("a file")
    result = provision("keygen", "--kid", "k1", "--out", tmp_path / "keys", ok=False)
    assert result.returncode == 2 and "cannot use" in result.stderr and "key folder" in result.stderr
    with pytest.raises(KeyFolderError, match="key folder"):
        keygen("EdDSA", "k1", tmp_path / "keys" / "sub")


def test_keygen_refuses_a_kid_already_published(tmp_path: Path) -> None:
    provision("keygen", "--kid", "k1", "--out", tmp_path)
    (tmp_path / "k1.private.pem").unlink()
    result = provision("keygen", "--kid", "k1", "--out", tmp_path, ok=False)
    assert "already holds a key with kid 'k1'" in result.stderr
    assert not (tmp_path / "k1.private.pem").exists()


def test_keygen_refuses_a_broken_key_set_rather_than_replacing_it(tmp_path: Path) -> None:
    (tmp_path / "jwks.json").write_text("{broken")
    result = provision("keygen", "--kid", "k1", "--out", tmp_path, ok=False)
    assert "not valid JSON" in result.stderr
    assert (tmp_path / "jwks.json").read_text() == "{broken"


ISSUE_BY_HAND = ["issue", "--kid", "k1", "--deal", "d", "--merchant", "m", "--user", "u"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["issue", "--key", "missing.pem", *ISSUE_BY_HAND[1:], "--ttl", "60"], "cannot read private key"),
        (["keygen", "--alg", "HS256", "--kid", "k1", "--out", "x"], "invalid choice"),
        ([*ISSUE_BY_HAND, "--key", "KEY", "--ttl", "0"], "ttl must be a whole number of seconds from 1"),
        ([*ISSUE_BY_HAND, "--key", "KEY", "--ttl", "99999999999999999999"], "366 days"),
    ],
)
def test_mistakes_get_a_clear_message_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    provision("keygen", "--kid", "k1", "--out", tmp_path)
    args = [str(tmp_path / "k1.private.pem") if a == "KEY" else a for a in args]
    result = provision(*args, ok=False)
    assert result.returncode == 2
    assert says in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("alg", "version"), [("EdDSA", 12), ("ES256", 12), ("RS256", 18)])
def test_qr_renders_a_code_that_decodes_to_the_voucher(tmp_path: Path, alg: str, version: int) -> None:
    provision("keygen", "--alg", alg, "--kid", "k1", "--out", tmp_path)
    token = issue_voucher(tmp_path / "k1.private.pem")
    result = provision("qr", token, "--out", tmp_path / "v.png")
    assert f"QR version {version}," in result.stderr
    image = np.asarray(Image.open(tmp_path / "v.png").convert("L"))
    decoded = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)
    assert [(code.text, code.ec_level) for code in decoded] == [(token, "M")]
    assert verify(decoded[0].text, KeySet.load(tmp_path / "jwks.json"), merchant="m1").is_accepted


def test_qr_reads_the_token_from_stdin(tmp_path: Path) -> None:
    result = subprocess.run(
        [PROVISION, "qr", "-", "--out", str(tmp_path / "v.svg")],
        input="abc.def.ghi\n",
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "<svg" in (tmp_path / "v.svg").read_text()


def test_help_shows_the_examples() -> None:
    out = provision("--help").stdout
    assert "keygen" in out and "issue" in out and "qr" in out and "examples:" in out


def test_issue_refuses_a_key_its_key_set_does_not_publish(tmp_path: Path) -> None:
    provision("keygen", "--kid", "k1", "--out", tmp_path / "a")
    provision("keygen", "--alg", "ES256", "--kid", "k1", "--out", tmp_path / "b")
    args = ["--deal", "d1", "--merchant", "m1", "--user", "u1", "--ttl", "600"]
    wrong_kid = provision("issue", "--key", tmp_path / "a" / "k1.private.pem", "--kid", "k9", *args, ok=False)
    assert "no key with kid 'k9'" in wrong_kid.stderr
    other_key = provision(
        "issue",
        "--key",
        tmp_path / "b" / "k1.private.pem",
        "--kid",
        "k1",
        "--jwks",
        tmp_path / "a" / "jwks.json",
        *args,
        ok=False,
    )
    assert "publishes another key under kid 'k1'" in other_key.stderr
    assert wrong_kid.stdout == other_key.stdout == "", "no voucher is printed"


def test_issue_without_a_key_set_beside_the_key_says_the_kid_is_unchecked(tmp_path: Path) -> None:
    provision("keygen", "--kid", "k1", "--out", tmp_path)
    (tmp_path / "jwks.json").unlink()
    args = ["--deal", "d1", "--merchant", "m1", "--user", "u1", "--ttl", "600"]
    result = provision("issue", "--key", tmp_path / "k1.private.pem", "--kid", "k1", *args)
    assert "not checked" in result.stderr and result.stdout.count(".") == 2


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["qr", "", "--out", "e.png"], "token is empty"),
        (["qr", "x" * 3000, "--out", "e.png"], "does not fit in a QR code"),
        (["qr", "abc", "--out", "e.png", "--scale", "100000"], "scale must be from 1 to 64"),
        (["qr", "abc", "--out", "e"], "the file extension names the image format, and 'none' is not"),
        (["qr", "abc", "--out", "e.xyz"], "and '.xyz' is not one it can write; use .png, .svg, .svgz, .pdf"),
    ],
)
def test_qr_refuses_what_it_cannot_draw(tmp_path: Path, args: list[str], says: str) -> None:
    result = subprocess.run([PROVISION, *args], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and says in result.stderr and result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_qr_writes_every_format_it_names(tmp_path: Path) -> None:
    """The list an unknown extension is answered with is true: each of them is written."""
    from shopcardd_provision.qr import FORMATS

    for name in FORMATS:
        provision("qr", "abc", "--out", tmp_path / f"v.{name}")
        assert (tmp_path / f"v.{name}").stat().st_size > 0, name
    assert "--out: .png, .svg, .svgz" in provision("qr", "--help").stdout.replace("\n", " ")


@pytest.mark.parametrize("kid", ["k 1", "k\x1b1", ".hidden", "a/b", "k" * 17, ""])
def test_keygen_refuses_a_kid_that_is_no_good_as_a_file_name_or_header(tmp_path: Path, kid: str) -> None:
    result = provision("keygen", "--kid", kid, "--out", tmp_path, ok=False)
    assert result.returncode == 2 and "use 1 to 16 letters" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_qr_does_not_make_folders_it_was_not_asked_for(tmp_path: Path) -> None:
    result = provision("qr", "abc", "--out", tmp_path / "missing" / "v.png", ok=False)
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "missing").exists()
