"""The device's one configuration file (TOML), read in ``main`` and never at import.

Every setting is checked at start-up, and the first wrong or missing one stops it with one
line that names the setting (``[camera] source: ...``), because a counter that starts
half-configured fails later, in front of a customer. Relative paths are taken from the
folder of the configuration file, so a config and its key set can travel together.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any, Final, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shopcardd_commands.answers import plain_http_refusal
from shopcardd_voucher import DEFAULT_LEEWAY_SECONDS, MAX_LEEWAY_SECONDS

from .errors import ConfigError
from .ledger import DEFAULT_MAX_REJECTIONS

DEFAULT_CONFIG_PATH: Final = Path("/etc/shopcardd/device.toml")
CONFIG_ENV: Final = "SHOPCARDD_DEVICE_CONFIG"
SOURCES: Final = ("picamera", "v4l2", "files", "keyboard")
DECODERS: Final = ("auto", "zxing", "zbar")
AUTOFOCUS: Final = ("macro", "normal", "off")


@dataclass(frozen=True)
class GpioConfig:
    """BCM pin numbers (or gpiozero pin names) of the feedback panel."""

    accept: int | str = 17
    reject: int | str = 27
    buzzer: int | str = 22
    signal_seconds: float = 1.0


@dataclass(frozen=True)
class CameraConfig:
    """The frame source and the settings it reads; ``path`` means what the source needs."""

    source: str = "picamera"
    path: tuple[str, ...] = ()
    width: int = 640
    height: int = 480
    autofocus: str = "macro"
    exposure_value: float = -0.5
    exposure_us: int = 0
    analogue_gain: float = 0.0


@dataclass(frozen=True)
class DecoderConfig:
    name: str = "auto"
    debounce_seconds: float = 3.0
    try_invert: bool = True
    """Also look for light-on-dark codes (dark-mode phones); costs libzbar a second pass."""


@dataclass(frozen=True)
class SyncConfig:
    """For ``shopcardd-device sync``: ``interval_seconds`` is what the systemd timer should use (a
    hint for operators and the fleet tooling), ``batch_size`` redemptions per request (the backend
    takes at most 500), ``timeout_seconds`` per request."""

    interval_seconds: int = 300
    batch_size: int = 200
    timeout_seconds: float = 10.0


DEFAULT_LAN_PORT: Final = 47474
DEFAULT_LAN_GROUP: Final = "239.255.74.74"


@dataclass(frozen=True)
class LanConfig:
    """The shop LAN (``shopcardd_device.lan``): ``run`` tells the merchant's other counters of each
    redemption and hears theirs. On by default; it does anything only once the device has peers (a
    sync brought them) and a ``device_key`` to sign with. ``peers``: pinned ``host:port`` addresses,
    for a network where multicast does not reach (``discovery`` finds the rest)."""

    enabled: bool = True
    port: int = DEFAULT_LAN_PORT
    peers: tuple[tuple[str, int], ...] = ()
    discovery: bool = True
    group: str = DEFAULT_LAN_GROUP
    hello_seconds: float = 5.0


@dataclass(frozen=True)
class DeviceConfig:
    device_id: str
    merchant_id: str
    data_dir: Path
    keyset: Path
    backend_url: str | None = None
    device_key: Path | None = None
    """This device's Ed25519 key (PEM, from ``shopcardd-provision enroll``): signs its sync tokens."""
    trust_key: Path | None = None
    """The backend's trust key as pinned at enrolment (a public JWK): a sync answer is believed
    only when signed by it, or by a key it announced (the pin then moves, in the ledger)."""
    ca_file: Path | None = None
    """The CA certificates (PEM) that sign the backend's https certificate, for a private CA;
    unset, the system's."""
    leeway_seconds: int = DEFAULT_LEEWAY_SECONDS
    log_level: str = "info"
    timezone: tzinfo | None = None
    """The shop's time zone for the times a person reads (verdicts, status); ``None``: the system's."""
    max_rejections: int = DEFAULT_MAX_REJECTIONS
    """Rejection rows the ledger keeps (the oldest go first; the counts by reason stay exact)."""
    gpio: GpioConfig = field(default_factory=GpioConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    lan: LanConfig = field(default_factory=LanConfig)
    source_file: Path | None = None

    @property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.sqlite3"

    @classmethod
    def load(cls, path: str | Path | None = None) -> DeviceConfig:
        """Read ``path``, else ``$SHOPCARDD_DEVICE_CONFIG``, else ``/etc/shopcardd/device.toml``."""
        chosen = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)
        try:
            text = chosen.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                f"config file {chosen} not found (give --config PATH or set {CONFIG_ENV})"
            ) from None
        except OSError as exc:
            raise ConfigError(f"config file {chosen}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {chosen} is not a TOML text file (not UTF-8)") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {chosen} is not valid TOML: {exc}") from None
        return cls.from_dict(data, base=chosen.resolve().parent, source_file=chosen)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path, source_file: Path | None = None) -> DeviceConfig:
        top = _Table(data, "", base)
        config = cls(
            device_id=top.identifier("device_id"),
            merchant_id=top.identifier("merchant_id"),
            data_dir=top.path("data_dir"),
            keyset=top.path("keyset"),
            backend_url=top.text("backend_url", "") or None,
            device_key=top.path("device_key") if "device_key" in data else None,
            trust_key=top.path("trust_key") if "trust_key" in data else None,
            ca_file=top.path("ca_file") if "ca_file" in data else None,
            leeway_seconds=top.number("leeway_seconds", DEFAULT_LEEWAY_SECONDS, int, 0, MAX_LEEWAY_SECONDS),
            log_level=top.choice("log_level", "info", ("debug", "info", "warning", "error"), any_case=True),
            timezone=_timezone(top),
            max_rejections=top.number("max_rejections", DEFAULT_MAX_REJECTIONS, int, 0, 1_000_000),
            gpio=_gpio(top.table("gpio")),
            camera=_camera(top.table("camera")),
            decoder=_decoder(top.table("decoder")),
            sync=_sync(top.table("sync")),
            lan=_lan(top.table("lan")),
            source_file=source_file,
        )
        top.refuse_unknown()
        refusal = plain_http_refusal(config.backend_url) if config.backend_url else None
        if refusal:
            raise ConfigError(f"backend_url: {refusal}")
        return config


def _timezone(table: _Table) -> tzinfo | None:
    """``timezone``, an IANA name such as "Europe/Berlin"; unset, the system's own time zone."""
    name = table.text("timezone", "")
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(
            f'timezone: unknown time zone {name!r} (an IANA name such as "Europe/Berlin"; '
            "timedatectl list-timezones lists them)"
        ) from None


def _gpio(table: _Table) -> GpioConfig:
    config = GpioConfig(
        accept=table.pin("accept", GpioConfig.accept),
        reject=table.pin("reject", GpioConfig.reject),
        buzzer=table.pin("buzzer", GpioConfig.buzzer),
        signal_seconds=table.number("signal_seconds", GpioConfig.signal_seconds, float, 0.0, 10.0),
    )
    pins = [config.accept, config.reject, config.buzzer]
    if len({bcm_pin(pin) for pin in pins}) != len(pins):
        raise ConfigError(f"[gpio]: accept, reject and buzzer need three different pins, not {pins}")
    table.refuse_unknown()
    return config


_BCM_NAME: Final = re.compile(r"(?:GPIO|BCM)?([0-9]+)")
_FORTY_PIN_PI: Final = 0xA02082
"""A Pi 3 B: its 40-pin J8 header is laid out as on every Pi since the B+ (Pi 4 and 5 included)."""


def bcm_pin(pin: int | str) -> int | str:
    """The BCM number ``pin`` names, so that two spellings of one pin are seen as the same pin.

    ``17``, ``"17"``, ``"GPIO17"`` and ``"BCM17"`` are read here; a physical name (``"BOARD11"``,
    ``"J8:11"``, ``"WPI0"``) by gpiozero's board data for the 40-pin header of every Pi since the
    B+ (the 26-pin header of the first Pis numbered some pins differently). A name neither knows is
    kept as written: the pin factory judges it when the panel is built.
    """
    if isinstance(pin, int):
        return pin
    if match := _BCM_NAME.fullmatch(pin.strip()):
        return int(match[1])
    from gpiozero import GPIOZeroError  # only for a physical name: gpiozero takes a while to import
    from gpiozero.pins.pi import PiBoardInfo

    try:
        name = PiBoardInfo.from_revision(_FORTY_PIN_PI).to_gpio(pin.strip())
    except (GPIOZeroError, ValueError):
        return pin
    match = _BCM_NAME.fullmatch(str(name))
    return int(match[1]) if match else pin


def _camera(table: _Table) -> CameraConfig:
    source = table.choice("source", CameraConfig.source, SOURCES)
    config = CameraConfig(
        source=source,
        path=table.paths("path"),
        width=table.number("width", CameraConfig.width, int, 64, 4096),
        height=table.number("height", CameraConfig.height, int, 64, 4096),
        autofocus=table.choice("autofocus", CameraConfig.autofocus, AUTOFOCUS),
        exposure_value=table.number("exposure_value", CameraConfig.exposure_value, float, -8.0, 8.0),
        exposure_us=table.number("exposure_us", CameraConfig.exposure_us, int, 0, 1_000_000),
        analogue_gain=table.number("analogue_gain", CameraConfig.analogue_gain, float, 0.0, 64.0),
    )
    if source == "files" and not config.path:
        raise ConfigError('[camera] path: source = "files" needs a folder or a list of image files')
    table.refuse_unknown()
    return config


def _decoder(table: _Table) -> DecoderConfig:
    config = DecoderConfig(
        name=table.choice("name", DecoderConfig.name, DECODERS),
        debounce_seconds=table.number("debounce_seconds", DecoderConfig.debounce_seconds, float, 0.0, 60.0),
        try_invert=table.flag("try_invert", DecoderConfig.try_invert),
    )
    table.refuse_unknown()
    return config


def _sync(table: _Table) -> SyncConfig:
    config = SyncConfig(
        interval_seconds=table.number("interval_seconds", SyncConfig.interval_seconds, int, 10, 86_400),
        batch_size=table.number("batch_size", SyncConfig.batch_size, int, 1, 500),
        timeout_seconds=table.number("timeout_seconds", SyncConfig.timeout_seconds, float, 0.5, 300.0),
    )
    table.refuse_unknown()
    return config


def _lan(table: _Table) -> LanConfig:
    port = table.number("port", LanConfig.port, int, 1, 65535)
    pinned = table.strings("peers")
    config = LanConfig(
        enabled=table.flag("enabled", LanConfig.enabled),
        port=port,
        peers=tuple(_address(item, port) for item in pinned),
        discovery=table.flag("discovery", LanConfig.discovery),
        group=table.text("group", LanConfig.group),
        hello_seconds=table.number("hello_seconds", LanConfig.hello_seconds, float, 0.1, 600.0),
    )
    try:
        if not ipaddress.IPv4Address(config.group).is_multicast:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"[lan] group: must be an IPv4 multicast address ({DEFAULT_LAN_GROUP}), not {config.group!r}"
        ) from None
    table.refuse_unknown()
    return config


def _address(item: str, default_port: int) -> tuple[str, int]:
    """``host:port`` (or ``host``, on the default port) of a pinned peer."""
    host, colon, port = item.rpartition(":")
    if not colon:
        host, port = item, str(default_port)
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535 or any(ch.isspace() for ch in host):
        raise ConfigError(
            f'[lan] peers: each must be "host:port" (such as "192.168.1.21:{default_port}"), not {item!r}'
        )
    return host, int(port)


_MISSING: Final = object()
N = TypeVar("N", int, float)


class _Table:
    """One TOML table being read; remembers which keys were used so strays are refused."""

    def __init__(self, data: Any, name: str, base: Path) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"[{name}]: must be a table")
        self.data, self.name, self.base, self.used = data, name, base, set[str]()

    def _label(self, key: str) -> str:
        return f"[{self.name}] {key}" if self.name else key

    def _get(self, key: str, default: Any) -> Any:
        self.used.add(key)
        value = self.data.get(key, default)
        if value is _MISSING:
            raise ConfigError(f"{self._label(key)}: required setting is missing")
        return value

    def _check(self, key: str, ok: bool, wanted: str, value: Any) -> None:
        if not ok:
            raise ConfigError(f"{self._label(key)}: must be {wanted}, not {value!r}")

    def table(self, key: str) -> _Table:
        return _Table(self._get(key, {}), key, self.base)

    def text(self, key: str, default: Any = _MISSING) -> str:
        value = self._get(key, default)
        self._check(
            key, isinstance(value, str) and (bool(value) or value == default), "a non-empty string", value
        )
        return value

    def identifier(self, key: str) -> str:
        """A required id (``device_id``, ``merchant_id``): a non-empty string without whitespace."""
        value = self.text(key)
        if any(ch.isspace() for ch in value):
            raise ConfigError(f"{self._label(key)}: must not contain whitespace, not {value!r}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...], *, any_case: bool = False) -> str:
        """One of ``choices``; with ``any_case``, spelt in any case (``"DEBUG"`` as the backend takes it)."""
        value = self._get(key, default)
        if any_case and isinstance(value, str):
            value = value.lower()
        self._check(key, value in choices, "one of " + ", ".join(f'"{c}"' for c in choices), value)
        return value

    def number(self, key: str, default: N, kind: Callable[[Any], N], low: N, high: N) -> N:
        value = self._get(key, default)
        number_ok = isinstance(value, int | float) and not isinstance(value, bool)
        if kind is int:
            number_ok = number_ok and isinstance(value, int)
        self._check(key, number_ok and low <= value <= high, f"a number from {low} to {high}", value)
        return kind(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        self._check(key, isinstance(value, bool), "true or false", value)
        return value

    def pin(self, key: str, default: int | str) -> int | str:
        value = self._get(key, default)
        ok = (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 53) or (
            isinstance(value, str) and bool(value.strip())
        )
        self._check(key, ok, 'a BCM pin number 0-53 or a gpiozero pin name such as "GPIO17"', value)
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._get(key, [])
        ok = isinstance(value, list) and all(isinstance(item, str) and item for item in value)
        self._check(key, ok, "a list of strings", value)
        return tuple(value)

    def path(self, key: str) -> Path:
        return self._resolve(self.text(key))

    def paths(self, key: str) -> tuple[str, ...]:
        value = self._get(key, [])
        items = [value] if isinstance(value, str) else value
        self._check(
            key,
            isinstance(items, list) and all(isinstance(i, str) and i for i in items),
            "a path or a list",
            value,
        )
        # "-" (stdin) and device nodes stay as written; files are taken from the config's folder.
        return tuple(item if item == "-" else str(self._resolve(item)) for item in items if item)

    def _resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base / path

    def refuse_unknown(self) -> None:
        """Refuse a key this table does not have, naming the closest one it does (every known key
        was read before this is called, so ``used`` holds them all)."""
        stray = sorted(set(self.data) - self.used)
        if not stray:
            return
        known = sorted(self.used)
        close = difflib.get_close_matches(stray[0].lower(), known, n=1)
        hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(known)
        raise ConfigError(f"{self._label(stray[0])}: unknown setting ({hint})")
