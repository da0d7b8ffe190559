"""Configuration: one TOML file; a wrong or missing setting stops start-up with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from shopcardd_device.config import CONFIG_ENV, DeviceConfig
from shopcardd_device.errors import ConfigError, DeviceError
from shopcardd_provision.qr import save_qr

from .conftest import Keys, WriteConfig, device_command

ROOT = Path(__file__).resolve().parents[2]
REST = '\ndata_dir = "d"\nkeyset = "k"'
BASE = 'device_id = "c"\nmerchant_id = "m"' + REST


def test_the_example_config_is_valid_and_documents_every_table() -> None:
    example = ROOT / "device" / "device.example.toml"
    config = DeviceConfig.load(example)
    assert config.camera.source == "picamera" and config.decoder.name == "auto"
    assert config.leeway_seconds == 60 and config.gpio.accept != config.gpio.reject
    documented = (ROOT / "docs" / "device.md").read_text()
    for table in ("[gpio]", "[camera]", "[decoder]", "[sync]", "[lan]"):
        assert table in example.read_text() and table in documented


def test_defaults_work_on_a_pi_and_relative_paths_follow_the_config_file(write_config: WriteConfig) -> None:
    path = write_config()
    config = DeviceConfig.load(path)
    assert config.data_dir == path.parent / "data"
    assert config.ledger_path.parent == path.parent / "data"
    assert (config.camera.width, config.camera.height) == (640, 480)
    assert config.backend_url is None


def test_the_environment_names_the_config_when_no_option_does(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(write_config()))
    assert DeviceConfig.load().device_id == "counter-1"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('merchant_id = "m"' + REST, "device_id: required"),
        (
            BASE + '\nleeway_seconds = "60"',
            "leeway_seconds",
        ),
        (
            BASE + '\n[camera]\nsource = "webcam"',
            "[camera] source",
        ),
        (
            BASE + '\n[camera]\nsource = "files"',
            "[camera] path",
        ),
        (
            BASE + '\n[decoder]\nname = "zebra"',
            "[decoder] name",
        ),
        (
            BASE + "\n[gpio]\naccept = 17\nreject = 17",
            "[gpio]",
        ),
        (
            BASE + "\n[gpio]\nbuzer = 5",
            "[gpio] buzer: unknown",
        ),
        (
            BASE + '\nbackend_url = "ftp://x"',
            "backend_url",
        ),
        (BASE + "\ngpio = 3", "[gpio]"),
        ('device_id = "c c"\nmerchant_id = "m"' + REST, "device_id"),
        ("device_id = ", "not valid TOML"),
    ],
)
def test_a_wrong_setting_is_named(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "device.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        DeviceConfig.load(path)
    assert issubclass(ConfigError, DeviceError) and issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (BASE + "\nleeway = 60", "leeway: unknown setting (did you mean leeway_seconds?)"),
        (BASE + "\n[gpio]\nbuzer = 5", "[gpio] buzer: unknown setting (did you mean buzzer?)"),
        (BASE + '\n[camera]\nsorce = "files"', "[camera] sorce: unknown setting (did you mean source?)"),
        (
            BASE + "\n[decoder]\ndebounce = 1.0",
            "[decoder] debounce: unknown setting (did you mean debounce_seconds?)",
        ),
        (BASE + "\n[sync]\nBatch_Size = 5", "[sync] Batch_Size: unknown setting (did you mean batch_size?)"),
        (BASE + "\n[camra]\nsource = 'files'", "camra: unknown setting (did you mean camera?)"),
        (
            BASE + "\n[gpio]\nzzz = 1",
            "[gpio] zzz: unknown setting (known: accept, buzzer, reject, signal_seconds)",
        ),
    ],
)
def test_an_unknown_setting_is_refused_with_the_closest_known_name(
    tmp_path: Path, text: str, said: str
) -> None:
    path = tmp_path / "device.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        DeviceConfig.load(path)
    assert str(refused.value) == said


@pytest.mark.parametrize(
    "pins",
    [
        'accept = "GPIO17"\nreject = 17',
        'accept = "BCM27"\nreject = "GPIO27"',
        'accept = "BOARD15"',  # physical pin 15 is GPIO22, the default buzzer
        'accept = "J8:11"\nreject = "17"',
    ],
)
def test_one_pin_spelt_two_ways_is_refused_as_a_duplicate(tmp_path: Path, pins: str) -> None:
    path = tmp_path / "device.toml"
    path.write_text(BASE + "\n[gpio]\n" + pins)
    with pytest.raises(ConfigError, match=r"\[gpio\]: accept, reject and buzzer need three different pins"):
        DeviceConfig.load(path)


def test_pin_names_of_different_pins_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "device.toml"
    path.write_text(BASE + '\n[gpio]\naccept = "GPIO5"\nreject = "BOARD11"\nbuzzer = "BCM22"')
    gpio = DeviceConfig.load(path).gpio
    assert (gpio.accept, gpio.reject, gpio.buzzer) == ("GPIO5", "BOARD11", "BCM22")  # passed on as written


def test_start_up_stops_with_one_line_naming_the_setting(write_config: WriteConfig, tmp_path: Path) -> None:
    result = device_command("status", "--config", write_config("[decoder]\nname = 'zebra'"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "[decoder] name" in result.stderr

    missing = device_command("verify", "--config", tmp_path / "nowhere.toml", "token")
    assert missing.returncode == 2 and "not found" in missing.stderr and CONFIG_ENV in missing.stderr


def test_an_unreadable_key_set_is_named(write_config: WriteConfig, tmp_path: Path) -> None:
    path = write_config()
    path.write_text(path.read_text().replace("keyset = ", 'keyset = "missing.json"\n# was ', 1))
    result = device_command("verify", "--config", path, "token")
    assert result.returncode == 2 and result.stderr.startswith("shopcardd-device verify: keyset:")


def test_a_data_dir_that_cannot_be_made_is_named(write_config: WriteConfig, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("in the way")
    path = write_config()
    path.write_text(path.read_text().replace('data_dir = "data"', 'data_dir = "file/data"'))
    result = device_command("verify", "--config", path, "token")  # status makes no folder: it only reads
    assert result.returncode == 2 and result.stderr.startswith(
        "shopcardd-device verify: data_dir: cannot create"
    )


def test_a_binary_config_or_key_set_is_one_line_naming_it(
    write_config: WriteConfig, keys: Keys, tmp_path: Path
) -> None:
    picture = tmp_path / "some.png"
    save_qr("not a config", picture)
    config = device_command("verify", "--config", picture, "token")
    assert config.returncode == 2 and config.stderr.count("\n") == 1
    assert (
        "config file" in config.stderr
        and "some.png" in config.stderr
        and "not a TOML text file" in config.stderr
    )
    for keyset in (picture, tmp_path):  # a picture, a folder: one line naming keyset, never a traceback
        path = write_config()
        path.write_text(path.read_text().replace(str(keys.jwks), str(keyset)))
        result = device_command("verify", "--config", path, "token")
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("shopcardd-device verify: keyset: ") and str(keyset) in result.stderr


def test_a_data_dir_that_is_a_file_says_it_is_not_a_folder(write_config: WriteConfig, tmp_path: Path) -> None:
    (tmp_path / "data").write_text("in the way")
    result = device_command("verify", "--config", write_config(), "token")
    assert result.returncode == 2
    assert (
        result.stderr == f"shopcardd-device verify: data_dir: {tmp_path / 'data'} is a file, not a folder\n"
    )


@pytest.mark.parametrize("spelt", ["DEBUG", "Debug", "debug"])
def test_the_log_level_is_taken_in_any_case_as_the_backend_takes_it(
    write_config: WriteConfig, spelt: str
) -> None:
    assert DeviceConfig.load(write_config(top=f'log_level = "{spelt}"')).log_level == "debug"


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://api.shopcardd.example", True),
        ("http://192.168.1.10:8000", True),
        ("https://api.shopcardd.example", False),
        ("http://127.0.0.1:8000", False),
        ("http://[::1]:8000", False),
        ("http://localhost:8000", False),
    ],
)
def test_backend_url_is_https_unless_on_loopback(write_config: WriteConfig, url: str, refused: bool) -> None:
    """Plain http to another machine lets anyone on the path answer the sync."""
    path = write_config(top=f'backend_url = "{url}"\nca_file = "ca.pem"')
    if refused:
        with pytest.raises(ConfigError, match="plain http to another machine: use https://"):
            DeviceConfig.load(path)
    else:
        config = DeviceConfig.load(path)
        assert config.backend_url == url and config.ca_file == path.parent / "ca.pem"
