"""The project file, pibake.toml: read with tomllib, every key checked, into frozen dataclasses `pibake bake` takes.

A project is one directory with a ``pibake.toml`` and the user's model beside it. `load` reads the
file and checks everything that can be checked on this machine without a guest: the board against
the board table and against the base, the model file's format, the labels against the model's
output count, every sample decoded, the system settings (hostname, SSH keys, Wi-Fi), the user's
playbooks. Any problem is a UsageError that names the file, the dotted key (``model.tolerance``)
and the line the key is on; an unknown key says which known key it is probably a typo of. Paths
in the file are relative to the file's directory.

`SCHEMA` lists every key with its default and a one-line explanation: `pibake init` writes its
template from it, and the README documents the same keys (a test holds the two together).

Checks that need a package the host may not have are skipped, never failed, and each skip is
recorded in `Project.skipped` (for the report): the labels and input size against the model need
a TFLite interpreter (tflite-runtime, LiteRT, or TensorFlow's ``tf.lite``) for a ``.tflite`` model and
onnxruntime for an ``.onnx`` one, decoding the samples needs Pillow, and ``.keras``/``.h5`` models are
checked by their bytes only: loading one needs TensorFlow, which `load` never imports. `pibake bake` converts such a
model to TFLite on this machine (pibake.convert) and checks the result with `with_model`, as `load` checks a .tflite.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import glob
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
import struct
import sys
import tomllib
import zipfile
import zoneinfo
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pibake import boards
from pibake.boards import firmware as piboot
from pibake.errors import CommandFailed, PibakeError, UsageError
from pibake.isa import Arch
from pibake.util.proc import run

log = logging.getLogger(__name__)

PROJECT_FILE = "pibake.toml"
# Where `pibake bake` writes in the project's directory: the image, its reports, a Keras model's .tflite.
BUILD_DIR = "build"
# ImageSpec.size_mb: what `pibake image build` makes.
DEFAULT_IMAGE_SIZE_MB = 2048
DEFAULT_TOLERANCE = 1e-5
# The inference service's port (inference_service_port: Triton's HTTP port).
DEFAULT_PORT = 8000
# What the Pi-side package does to an image today (pibake_target.preprocess): RGB, / 255.
DEFAULT_SCALE = 1 / 255
DEFAULT_HOSTNAME = "raspberrypi"
DEFAULT_USER = "pi"
DEFAULT_TIMEZONE = "Etc/UTC"
DEFAULT_LOCALE = "C.UTF-8"

MODEL_FORMATS = {".tflite": "tflite", ".onnx": "onnx", ".keras": "keras", ".h5": "keras"}
CHANNEL_ORDERS = ("rgb", "bgr")
# What the service on the Pi decodes (pibake_target.preprocess.sniff_image): PNG and JPEG only.
SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

# Runtimes a project may name, the model formats each runs and the Debian architectures it has wheels
# for (DESIGN.md, measured: no LiteRT or onnxruntime for armv7l). "auto": the platform's choice.
RUNTIMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "tflite-runtime": (("tflite", "keras"), ("armhf",)),
    "ai-edge-litert": (("tflite", "keras"), ("arm64",)),
    "onnxruntime": (("onnx",), ("arm64",)),
}
AUTO_RUNTIME = "auto"

# OpenSSH public key types (ssh-keygen -t, and the FIDO "sk-" ones).
SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
)

_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
# Debian's adduser default NAME_REGEX.
_USER = re.compile(r"^[a-z][-a-z0-9_]{0,31}$")
# Debian policy 5.6.1: lower case letters, digits, + - . ; at least two characters, starting alphanumeric.
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_LOCALE = re.compile(r"^(C|POSIX|C\.UTF-8|C\.utf8|[a-z]{2,3}(_[A-Z]{2})?(\.[A-Za-z0-9-]+)?(@[a-z]+)?)$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RELEASE_DATE_STEM = re.compile(r"^\d{4}-\d{2}-\d{2}-raspios-")


# ---------------------------------------------------------------- the keys


@dataclass(frozen=True)
class Key:
    """One key of pibake.toml: its dotted name, its default as TOML text, and what it does.

    ``default`` is "" where there is no literal default (a required key, or one computed from the
    model); ``example`` is then what `pibake init` shows, commented out. A line break in ``doc`` starts
    a comment line of its own in the template.
    """

    name: str
    default: str
    doc: str
    required: bool = False
    example: str = ""

    @property
    def table(self) -> str:
        return self.name.rsplit(".", 1)[0]

    @property
    def leaf(self) -> str:
        return self.name.rsplit(".", 1)[1]


TABLES: dict[str, str] = {
    "target": "The board the card is for and the system the image starts from.",
    "model": "The model, its labels and the samples that prove it runs the same on the Pi as here.",
    "model.preprocessing": "How a sample image becomes the model's input: resize, then (pixel * scale - mean) / std.",
    "runtime": "The inference runtime installed on the Pi.",
    "service": "The inference service on the Pi (POST /predict and the Open Inference Protocol v2).",
    "system": "The system on the card.",
    "system.wifi": "Wi-Fi, written the way the base configures networking. Leave the table out for Ethernet only.",
    "provision": "Your own Ansible, run after pibake's roles.",
}

# The boards pibake can neither bake nor emulate: Debian's armhf port is built for ARMv7
# (boards.firmware.require_debian_board) and no machine profile emulates an ARMv6 CPU (the board table's emulation).
ARMV6_BOARDS = tuple(b.name for b in boards.BOARDS.values() if b.isa.arch < Arch.ARMV7)

SCHEMA: tuple[Key, ...] = (
    Key(
        "target.board",
        f'"{boards.DEFAULT_BOARD}"',
        "Raspberry Pi board: " + ", ".join(boards.BOARDS) + ".\n"
        f"{' and '.join(ARMV6_BOARDS)} (ARMv6) cannot be baked or emulated: Debian armhf and every profile need ARMv7.",
    ),
    Key(
        "target.base",
        "",
        "What the image starts from: a Debian base pibake builds (debian-trixie-arm64: 64-bit, LiteRT or onnxruntime, "
        "for pi3, pi3b-plus, pi-zero-2, pi4; debian-bookworm-armhf: 32-bit, tflite-runtime, for pi2 and up; "
        "debian-bullseye: 32-bit, legacy), a Raspberry Pi OS release (bookworm-armhf-lite, latest-arm64-lite, ...; "
        "`pibake image fetch --list`), or a local .img file (it gets the runtimes of the Debian base with its "
        "userland: trixie arm64, bookworm armhf or bullseye armhf). Default: the board's, debian-trixie-arm64 where it "
        "has a 64-bit core, debian-bookworm-armhf on the pi2.",
        example='"debian-trixie-arm64"',
    ),
    Key("target.image_size_mb", str(DEFAULT_IMAGE_SIZE_MB), "Size of the finished image in MiB."),
    Key(
        "model.file",
        "",
        "The model: .tflite, .onnx (baked on debian-trixie-arm64, with onnxruntime), or Keras .keras/.h5 (bake "
        "converts it to TFLite on this machine, into build/, with the convert extra: pip install 'pibake[convert]').",
        required=True,
        example='"model.tflite"',
    ),
    Key("model.labels", '"labels.txt"', "Class names, one a line, in the model's output order (default: beside it)."),
    Key(
        "model.samples",
        '"samples/"',
        "PNG/JPEG inputs run here and on the emulated Pi: a directory, glob, file or list (default: beside it).",
    ),
    Key("model.tolerance", "1e-05", "Largest absolute difference allowed between this machine's and the Pi's outputs."),
    Key(
        "model.preprocessing.size",
        "",
        "Input [width, height] in pixels; default: the model's own input size.",
        example="[224, 224]",
    ),
    Key("model.preprocessing.scale", repr(DEFAULT_SCALE), "Each pixel (0-255) is multiplied by this (1/255)."),
    Key("model.preprocessing.mean", "0.0", "Subtracted after scaling: one number, or one per channel [r, g, b]."),
    Key("model.preprocessing.std", "1.0", "Divided by after the mean: one number, or one per channel [r, g, b]."),
    Key("model.preprocessing.channel_order", '"rgb"', 'Channel order the model expects: "rgb" or "bgr".'),
    Key(
        "runtime.name",
        f'"{AUTO_RUNTIME}"',
        'Runtime on the Pi: "auto" (the platform\'s choice for the model: onnxruntime for .onnx), '
        + ", ".join(f'"{r}"' for r in RUNTIMES)
        + ".",
    ),
    Key("runtime.version", '""', "Pin the runtime's version; empty: the version pibake pins for the platform."),
    Key("service.enabled", "true", "Install and start the inference service."),
    Key("service.port", str(DEFAULT_PORT), "TCP port the service listens on."),
    Key("service.model_name", '""', "The model's name in the API (/v2/models/NAME); empty: the model file's stem."),
    Key("system.hostname", f'"{DEFAULT_HOSTNAME}"', "Host name of the card (one RFC 1123 label)."),
    Key("system.user", f'"{DEFAULT_USER}"', "The login user (key login only, sudo without a password)."),
    Key(
        "system.ssh_keys",
        "[]",
        'Public keys that may log in as the user: key lines ("ssh-ed25519 AAAA... me@laptop") or files holding them.',
    ),
    Key("system.timezone", f'"{DEFAULT_TIMEZONE}"', "Time zone (IANA name, e.g. Europe/London)."),
    Key("system.locale", f'"{DEFAULT_LOCALE}"', "Locale (e.g. en_GB.UTF-8)."),
    Key("system.packages", "[]", "Extra Debian packages to install."),
    Key(
        "system.wifi.country",
        "",
        "Regulatory country: ISO 3166 alpha-2, two capital letters.",
        required=True,
        example='"GB"',
    ),
    Key("system.wifi.ssid", "", "Network name.", required=True, example='"my-network"'),
    Key(
        "system.wifi.psk",
        "",
        "Passphrase (8-63 characters) or 64 hex digits; leave it and psk_env out for an open network.",
        example='"correct horse battery staple"',
    ),
    Key(
        "system.wifi.psk_env",
        "",
        "Read the passphrase from this environment variable instead, to keep it out of this file.",
        example='"PIBAKE_WIFI_PSK"',
    ),
    Key("provision.playbooks", "[]", "Playbooks run after pibake's roles, in order."),
    Key("provision.roles", "[]", "Role directories applied after pibake's roles, in order."),
)

KEYS: dict[str, Key] = {k.name: k for k in SCHEMA}


# ---------------------------------------------------------------- the project


@dataclass(frozen=True)
class Target:
    """[target]: the board, the base (``base_kind`` "debian", "raspios" or "image") and the image's size."""

    board: str
    base: str
    base_kind: str
    # A local image (base_kind "image"), resolved; None otherwise.
    base_image: Path | None
    # The Raspberry Pi OS release's architecture, or the Debian base's; None for a local image (read at bake).
    arch: str | None
    image_size_mb: int


@dataclass(frozen=True)
class Preprocessing:
    """[model.preprocessing]: resize to ``size`` (width, height), then (pixel * scale - mean) / std per channel."""

    # None: the model's own input size, where no interpreter on this host could read it.
    size: tuple[int, int] | None
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str


@dataclass(frozen=True)
class Model:
    """[model]: the model file and its ``format`` ("tflite", "onnx", "keras"), labels, samples, tolerance."""

    file: Path
    format: str
    labels_file: Path
    labels: tuple[str, ...]
    samples: tuple[Path, ...]
    tolerance: float
    preprocessing: Preprocessing
    # Read from the model by a host interpreter; None where none was importable (see Project.skipped).
    input_shape: tuple[int, ...] | None = None
    output_count: int | None = None


@dataclass(frozen=True)
class Runtime:
    """[runtime]: ``name`` "auto" or one of RUNTIMES; ``version`` None: the one pibake pins."""

    name: str
    version: str | None


@dataclass(frozen=True)
class Service:
    """[service]: whether the inference service runs, its port, and the model's name in its API."""

    enabled: bool
    port: int
    model_name: str


@dataclass(frozen=True)
class WiFi:
    """[system.wifi]: the country, the network and its passphrase (None: an open network)."""

    country: str
    ssid: str
    # Never in a repr or a log line.
    psk: str | None = field(repr=False)


@dataclass(frozen=True)
class System:
    """[system]: host name, user, SSH public keys (key lines), time zone, locale, Wi-Fi, extra packages."""

    hostname: str
    user: str
    ssh_keys: tuple[str, ...]
    timezone: str
    locale: str
    wifi: WiFi | None
    packages: tuple[str, ...]


@dataclass(frozen=True)
class Provision:
    """[provision]: the user's playbooks and role directories, resolved, run after pibake's roles."""

    playbooks: tuple[Path, ...]
    roles: tuple[Path, ...]


@dataclass(frozen=True)
class Project:
    """A loaded and checked pibake.toml: everything `pibake bake` needs, paths resolved."""

    path: Path
    target: Target
    model: Model
    runtime: Runtime
    service: Service
    system: System
    provision: Provision
    # Checks that could not run on this host, each with why (the report lists them).
    skipped: tuple[str, ...] = ()

    @property
    def root(self) -> Path:
        """The project's directory: relative paths in the file start here; `bake` writes to ROOT/build."""
        return self.path.parent

    @property
    def build_dir(self) -> Path:
        """ROOT/build: where `bake` writes the image, its reports and a Keras model's conversion."""
        return self.root / BUILD_DIR


# ---------------------------------------------------------------- key positions


def key_lines(text: str) -> dict[str, int]:
    """Each dotted key of a TOML document, and each table, mapped to the 1-based line that defines it.

    tomllib keeps no positions, so this scans the text: table headers (``[a.b]``, ``[[a]]``),
    ``key = value`` lines (bare, quoted and dotted keys) outside multi-line strings and arrays.
    Keys inside an inline table are not listed: `line_of` falls back to the inline table's line.
    """
    lines: dict[str, int] = {}
    table: list[str] = []
    depth = 0
    multiline: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        start = 0
        if multiline is None and depth == 0:
            stripped = line.lstrip()
            if stripped.startswith("["):
                header = _parse_key(stripped.lstrip("[").lstrip(), stop="]")
                if header is not None:
                    table = header[0]
                    for i in range(1, len(table) + 1):
                        lines.setdefault(".".join(table[:i]), number)
                continue
            parsed = _parse_key(stripped, stop="=")
            if parsed is None:
                continue
            parts, used = parsed
            for i in range(1, len(parts) + 1):
                lines.setdefault(".".join([*table, *parts[:i]]), number)
            start = len(line) - len(stripped) + used + 1
        depth, multiline = _scan_value(line[start:], depth, multiline)
    return lines


def line_of(lines: Mapping[str, int], key: str) -> int | None:
    """The line of KEY (``a.b``, ``a.b[2]``) in `key_lines`' map, else of its nearest enclosing key or table."""
    parts = re.sub(r"\[\d+\]", "", key).split(".")
    while parts:
        found = lines.get(".".join(parts))
        if found is not None:
            return found
        parts.pop()
    return None


def _parse_key(s: str, *, stop: str) -> tuple[list[str], int] | None:
    """The parts of a (dotted, quoted) key at the start of S and the index of STOP after it; None if there is none."""
    parts: list[str] = []
    i = 0
    while True:
        while i < len(s) and s[i] in " \t":
            i += 1
        if i >= len(s):
            return None
        if s[i] in "\"'":
            end = s.find(s[i], i + 1)
            if end < 0:
                return None
            parts.append(s[i + 1 : end])
            i = end + 1
        else:
            m = re.match(r"[A-Za-z0-9_-]+", s[i:])
            if not m:
                return None
            parts.append(m.group())
            i += m.end()
        while i < len(s) and s[i] in " \t":
            i += 1
        if i < len(s) and s[i] == ".":
            i += 1
            continue
        if i < len(s) and s[i] == stop:
            return parts, i
        return None


def _scan_value(s: str, depth: int, multiline: str | None) -> tuple[int, str | None]:
    """Bracket depth and open multi-line string after the text S of a value (strings and comments skipped)."""
    i = 0
    while i < len(s):
        if multiline is not None:
            end = s.find(multiline, i)
            if end < 0:
                return depth, multiline
            i, multiline = end + 3, None
            continue
        c = s[i]
        if c == "#":
            break
        if s.startswith('"""', i) or s.startswith("'''", i):
            multiline = s[i : i + 3]
            i += 3
            continue
        if c == '"':
            i += 1
            while i < len(s) and s[i] != '"':
                i += 2 if s[i] == "\\" else 1
        elif c == "'":
            end = s.find("'", i + 1)
            i = len(s) if end < 0 else end
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth = max(depth - 1, 0)
        i += 1
    return depth, multiline


# ---------------------------------------------------------------- reading values


class _Reader:
    """Typed access to the parsed document; every failure names the file, the key and its line."""

    def __init__(self, path: Path, text: str, data: dict[str, Any]) -> None:
        self.file = path
        self.root = path.parent
        self.lines = key_lines(text)
        self.data = data

    def error(self, key: str, message: str) -> UsageError:
        line = line_of(self.lines, key)
        where = f"{self.file}:{line}" if line else str(self.file)
        return UsageError(f"{where}: {key}: {message}")

    def table(self, name: str) -> dict[str, Any]:
        node: Any = self.data
        for part in name.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise self.error(name, f"must be a table ([{name}]), got {_kind(node)}")
        known = {k.leaf for k in SCHEMA if k.table == name} | {t.rsplit(".", 1)[-1] for t in _subtables(name)}
        for key in node:
            if key not in known:
                raise self.error(f"{name}.{key}", _unknown(f"{name}.{key}", [f"{name}.{k}" for k in sorted(known)]))
        table: dict[str, Any] = node
        return table

    def has(self, key: str) -> bool:
        return key.rsplit(".", 1)[1] in self.table(key.rsplit(".", 1)[0])

    def get(self, key: str) -> Any:
        return self.table(key.rsplit(".", 1)[0]).get(key.rsplit(".", 1)[1])

    def string(self, key: str, default: str | None) -> str:
        value = self.get(key)
        if value is None:
            if default is None:
                raise self.error(key, "is required")
            return default
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {_kind(value)}")
        return value

    def integer(self, key: str, default: int, *, low: int, high: int | None = None) -> int:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {_kind(value)}")
        if value < low or (high is not None and value > high):
            raise self.error(key, f"must be between {low} and {high}, got {value}" if high else f"must be >= {low}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.get(key)
        if value is None:
            return default
        return self._number(key, value)

    def _number(self, key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, got {_kind(value)}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {_kind(value)}")
        return value

    def strings(self, key: str) -> list[str]:
        value = self.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise self.error(key, f"must be a list of strings, got {_kind(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{key}[{i}]", f"must be a string, got {_kind(item)}")
        return list(value)

    def channels(self, key: str, default: float) -> tuple[float, float, float]:
        value = self.get(key)
        if value is None:
            return (default, default, default)
        if isinstance(value, list):
            if len(value) != 3:
                raise self.error(key, f"must be one number or three (one per channel), got a list of {len(value)}")
            r, g, b = (self._number(f"{key}[{i}]", v) for i, v in enumerate(value))
            return (r, g, b)
        one = self._number(key, value)
        return (one, one, one)

    def path(self, key: str, text: str, *, directory: bool = False) -> Path:
        """TEXT (the value of KEY) as a path from the project's directory; it must exist."""
        path = (self.root / _expand(text)).resolve()
        if directory and not path.is_dir():
            raise self.error(key, f"no directory {path}")
        if not directory and not path.is_file():
            raise self.error(key, f"no such file: {path}" + (" (it is a directory)" if path.is_dir() else ""))
        return path


def _expand(text: str) -> Path:
    # os.path's: Path.expanduser raises for an unknown ~user, and the "no such file" message says it better.
    return Path(os.path.expanduser(text))  # noqa: PTH111


def _subtables(name: str) -> list[str]:
    return [t for t in TABLES if t.startswith(name + ".") and "." not in t[len(name) + 1 :]]


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}
    text = repr(value) if not isinstance(value, dict | list) else ""
    return names.get(type(value), type(value).__name__) + (f" ({text})" if text and len(text) < 40 else "")


def _unknown(key: str, known: list[str]) -> str:
    """An unknown key's message: a key of that name in another table, else the closest known name here."""
    leaf = key.rsplit(".", 1)[-1]
    elsewhere = [k.name for k in SCHEMA if k.leaf == leaf] + [t for t in TABLES if t.endswith("." + leaf)]
    if elsewhere:
        return f"unknown key; did you mean {elsewhere[0]}?"
    here = {k.rsplit(".", 1)[-1]: k for k in known}
    close = difflib.get_close_matches(leaf, list(here), n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean {here[close[0]]}?"
    anywhere = {k.leaf: k.name for k in SCHEMA}
    close = difflib.get_close_matches(leaf, list(anywhere), n=1, cutoff=0.75)
    if close:
        return f"unknown key; did you mean {anywhere[close[0]]}?"
    return "unknown key; known here: " + ", ".join(known)


# ---------------------------------------------------------------- loading


def find(directory: Path) -> Path:
    """DIRECTORY's pibake.toml (DIRECTORY may be the file itself); UsageError if there is none."""
    path = directory if directory.is_file() else directory / PROJECT_FILE
    if not path.is_file():
        raise UsageError(f"no {PROJECT_FILE} in {directory}: `pibake init --model YOUR_MODEL` writes one")
    return path


def load(
    path: Path,
    *,
    environ: Mapping[str, str] | None = None,
    release_lookup: Callable[[str], object] | None = None,
    check_model: bool = True,
) -> Project:
    """Read and check the project file PATH (or the pibake.toml in directory PATH).

    ENVIRON is where ``system.wifi.psk_env`` is looked up (default: os.environ). RELEASE_LOOKUP, when
    given (``pibake.image.catalogue.load().lookup``), checks a Raspberry Pi OS base against the real
    OS list; without it a release name is checked by its form only, so loading needs no network.
    CHECK_MODEL False skips opening the model with an interpreter (labels, input size), for callers
    that only need the settings. Raises UsageError naming the key and its line for anything wrong.
    """
    path = find(path).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from e
    r = _Reader(path, text, data)
    known_tables = {t for t in TABLES if "." not in t}
    for name in data:
        if name not in known_tables:
            raise r.error(name, _unknown(name, sorted(known_tables)))
    skipped: list[str] = []
    target = _target(r, release_lookup)
    model = _model(r, skipped, check_model=check_model)
    runtime = _runtime(r, model, target)
    service = _service(r, model)
    system = _system(r, os.environ if environ is None else environ)
    provision = Provision(
        playbooks=tuple(r.path(f"provision.playbooks[{i}]", p) for i, p in enumerate(r.strings("provision.playbooks"))),
        roles=tuple(
            r.path(f"provision.roles[{i}]", p, directory=True) for i, p in enumerate(r.strings("provision.roles"))
        ),
    )
    for skip in skipped:
        log.info("%s: not checked here: %s", path.name, skip)
    return Project(path, target, model, runtime, service, system, provision, tuple(skipped))


# ---------------------------------------------------------------- [target]


def _target(r: _Reader, release_lookup: Callable[[str], object] | None) -> Target:
    from pibake.disk.layout import Layout
    from pibake.image import build, imager

    board = r.string("target.board", boards.DEFAULT_BOARD)
    try:
        boards.get(board)
    except UsageError as e:
        raise r.error("target.board", str(e)) from None
    chosen = not r.has("target.base")
    base = build.default_base(board) if chosen else r.string("target.base", None)
    size = r.integer("target.image_size_mb", DEFAULT_IMAGE_SIZE_MB, low=1)
    try:
        Layout(total_mb=size)
    except UsageError as e:
        raise r.error("target.image_size_mb", str(e)) from None

    if base in build.BASES:
        release = build.BASES[base]
        try:
            # What image.build.default_spec refuses.
            piboot.require_debian_board(board, arch=release.arch, linux=release.linux)
        except UsageError as e:
            if chosen:
                why = f"base {base} (chosen for {board}: target.base is not set)"
            else:
                line = line_of(r.lines, "target.base")
                why = f"base {base} (target.base{f', line {line}' if line else ''})"
            raise r.error("target.board", f"{why} cannot boot it: {e}") from None
        return Target(board, base, "debian", None, release.arch, size)
    if base.endswith(".img") or "/" in base:
        return Target(board, base, "image", r.path("target.base", base), None, size)
    arch = _release_arch(base)
    if arch is None:
        raise r.error(
            "target.base",
            f"{base!r} is neither a Debian base ({', '.join(sorted(build.BASES))}), a Raspberry Pi OS release "
            "(SUITE-ARCH[-lite|-full], latest-ARCH[-lite|-full]: `pibake image fetch --list`) nor a .img file",
        )
    if release_lookup is not None:
        try:
            release_lookup(base)
        except PibakeError as e:
            raise r.error("target.base", str(e)) from None
    if not imager.devices(board, arch):  # the Imager's own rule: arm64 runs on the ARMv8 boards only
        b = boards.get(board)
        raise r.error(
            "target.board",
            f"base {base} is a 64-bit (arm64) release and board {board} ({b.model}, {b.core}) is not ARMv8: "
            "it cannot boot it. Choose an armhf release for this board",
        )
    return Target(board, base, "raspios", None, arch, size)


def _release_arch(name: str) -> str | None:
    """The architecture a Raspberry Pi OS release name (or alias, or file stem) says; None: not such a name."""
    from pibake.image import catalogue

    if _RELEASE_DATE_STEM.match(name):
        parsed = catalogue.name_from_filename(name + ".img.xz")
        return parsed[2] if parsed else None
    tokens = name.split("-")
    if len(tokens) not in (2, 3) or tokens[1] not in catalogue.ARCHITECTURES:
        return None
    if len(tokens) == 3 and tokens[2] not in catalogue.VARIANTS:
        return None
    if tokens[0] != "latest" and tokens[0] not in catalogue.DEBIAN_SUITES:
        return None
    return tokens[1]


# ---------------------------------------------------------------- [model]


def _model(r: _Reader, skipped: list[str], *, check_model: bool) -> Model:
    file = r.path("model.file", r.string("model.file", None))
    fmt = MODEL_FORMATS.get(file.suffix.lower())
    if fmt is None:
        raise r.error("model.file", f"{file.name}: not a model file pibake takes ({', '.join(MODEL_FORMATS)})")
    problem = _model_bytes_problem(file, fmt, skipped)
    if problem:
        raise r.error("model.file", f"{file}: {problem}")

    beside = file.parent.relative_to(r.root) if file.parent.is_relative_to(r.root) else file.parent
    labels_file = r.path("model.labels", r.string("model.labels", str(beside / "labels.txt")))
    labels = tuple(line.strip() for line in labels_file.read_text(encoding="utf-8").splitlines() if line.strip())
    if not labels:
        raise r.error("model.labels", f"{labels_file} holds no labels (one a line)")
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise r.error("model.labels", f"{labels_file} names {', '.join(duplicates)} more than once")

    samples = _samples(r, beside)
    tolerance = r.number("model.tolerance", DEFAULT_TOLERANCE)
    if tolerance < 0:
        raise r.error("model.tolerance", f"must be >= 0, got {tolerance}")
    pre = _preprocessing(r)

    input_shape: tuple[int, ...] | None = None
    output_count: int | None = None
    if fmt == "keras":
        skipped.append(
            f"{_SHAPES_SKIPPED} {file.name}: only TFLite and ONNX models are opened on this machine "
            "(the .keras/.h5 model is checked once converted)"
        )
    elif check_model:
        pre, input_shape, output_count = _open_model(r, file, fmt, labels, pre, skipped)
    _decode_samples(r, samples, skipped)
    return Model(file, fmt, labels_file, labels, samples, tolerance, pre, input_shape, output_count)


# How a skipped model check starts, followed by the model file's name.
_SHAPES_SKIPPED = "labels and input size against"


def _open_model(
    r: _Reader,
    file: Path,
    fmt: str,
    labels: tuple[str, ...],
    pre: Preprocessing,
    skipped: list[str],
    *,
    converted_from: str | None = None,
) -> tuple[Preprocessing, tuple[int, ...] | None, int | None]:
    """Open the TFLite or ONNX model FILE (FMT) with a host runtime and check it against LABELS and PRE.size (errors
    name r's file, the key and its line, and the model file CONVERTED_FROM where FILE is its conversion). Returns
    PRE with the model's own input size where it had none, the input shape and the output count; where no runtime
    is importable here, PRE unchanged, None, None and the skip appended to SKIPPED."""
    try:
        opened = _model_shapes(file, fmt)
    except UsageError as e:
        raise r.error("model.file", str(e)) from None
    if isinstance(opened, str):
        skipped.append(f"{_SHAPES_SKIPPED} {file.name}: {opened}")
        return pre, None, None
    input_shape, output_shape, runtime = opened
    _check_shapes(r, file, input_shape, output_shape, runtime, labels, pre, converted_from=converted_from)
    # onnxruntime loaded the whole graph: more than the onnx package's check, whose skip is moot.
    skipped[:] = [s for s in skipped if not s.startswith(f"{file.name} {_ONNX_BYTES_ONLY}")]
    if pre.size is None:
        pre = Preprocessing((input_shape[2], input_shape[1]), pre.scale, pre.mean, pre.std, pre.channel_order)
    return pre, input_shape, output_shape[-1]


def with_model(proj: Project, file: Path) -> Project:
    """PROJ with FILE, a .tflite or .onnx model (`pibake bake`'s conversion of a Keras model.file), as its model: the
    format FILE's, labels, samples, tolerance and every other setting PROJ's. FILE is checked as `load` checks a
    model file: its bytes, then, where a runtime for it is importable here, its input shape against
    model.preprocessing.size (filled in from the model where unset) and its output count against the labels; the
    old model's skipped shape check is dropped from ``skipped`` (or replaced by FILE's, if that is skipped too).

    Raises UsageError naming the project file, the key and its line, and FILE as converted from PROJ's model file.
    """
    fmt = MODEL_FORMATS.get(file.suffix.lower())
    text = proj.path.read_text(encoding="utf-8")
    r = _Reader(proj.path, text, tomllib.loads(text))
    if fmt not in ("tflite", "onnx"):
        raise r.error("model.file", f"{file}: bake runs .tflite and .onnx models, not {file.suffix or file.name!r}")
    old = proj.model.file.name
    skipped = [s for s in proj.skipped if not s.startswith(f"{_SHAPES_SKIPPED} {old}:")]
    problem = _model_bytes_problem(file, fmt, skipped)
    if problem:
        raise r.error("model.file", f"{file} (converted from {old}): {problem}")
    m = proj.model
    pre, input_shape, output_count = _open_model(r, file, fmt, m.labels, m.preprocessing, skipped, converted_from=old)
    model = replace(m, file=file, format=fmt, preprocessing=pre, input_shape=input_shape, output_count=output_count)
    return replace(proj, model=model, skipped=tuple(skipped))


def _model_bytes_problem(file: Path, fmt: str, skipped: list[str]) -> str | None:
    """Why FILE's bytes are not a model of format FMT, or None. Reads the header only (ONNX: the whole file)."""
    with file.open("rb") as f:
        head = f.read(4096)
    if not head:
        return "the file is empty"
    if fmt == "tflite":
        # A FlatBuffer with the TFLite schema's file identifier at bytes 4-8.
        if head[4:8] != b"TFL3":
            return "not a TFLite model (no TFL3 FlatBuffer identifier at byte 4)"
        return None
    if fmt == "keras" and file.suffix.lower() == ".keras":
        # Keras 3's format: a zip holding config.json and the weights.
        if not zipfile.is_zipfile(file):
            return "not a Keras .keras model (not a zip archive)"
        with zipfile.ZipFile(file) as z:
            if "config.json" not in z.namelist():
                return "not a Keras .keras model (no config.json in the archive)"
        return None
    if fmt == "keras":
        # HDF5's signature sits at 0, 512, 1024, 2048, ... (after an optional user block).
        size = file.stat().st_size
        with file.open("rb") as f:
            offset = 0
            while offset < size:
                f.seek(offset)
                if f.read(8) == _HDF5_MAGIC:
                    return None
                offset = 512 if offset == 0 else offset * 2
        return "not a Keras .h5 model (no HDF5 signature)"
    return _onnx_problem(file, skipped)


_ONNX_BYTES_ONLY = "parsed as protobuf only, not loaded: the onnx package is not installed here"


def _onnx_problem(file: Path, skipped: list[str]) -> str | None:
    """Why FILE is not an ONNX model, or None.

    With the ``onnx`` package, the file must load as a ModelProto. Without it, the file is walked as
    protobuf wire format: it must not be text, every top-level field must be well formed, and it
    must carry ModelProto's ir_version (field 1) and graph (field 7). That catches the wrong file,
    text and truncation, not a graph ONNX itself would reject.
    """
    onnx: Any
    try:
        onnx = importlib.import_module("onnx")
    except ImportError:
        onnx = None
    if onnx is not None:
        try:
            onnx.load(str(file), load_external_data=False)
        except Exception as e:  # onnx raises DecodeError, ValueError and more for a broken file
            return f"not an ONNX model: {type(e).__name__}: {e}"
        return None
    skipped.append(f"{file.name} {_ONNX_BYTES_ONLY}")
    data = file.read_bytes()
    try:
        head = data[:4096].decode("utf-8")
    except UnicodeDecodeError:
        head = ""
    if head and all(c.isprintable() or c in "\t\r\n" for c in head):
        return "not an ONNX model (the file is text)"
    try:
        fields = set(_protobuf_fields(data))
    except ValueError as e:
        return f"not an ONNX model ({e})"
    if not {1, 7} <= fields:
        return "not an ONNX model (no ir_version and graph fields)"
    return None


def _protobuf_fields(data: bytes) -> Iterator[int]:
    """The field numbers of a protobuf message's top-level fields; ValueError where the wire format breaks."""

    def varint(i: int) -> tuple[int, int]:
        value = shift = 0
        while i < len(data):
            byte = data[i]
            value |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                return value, i
            shift += 7
            if shift > 63:
                break
        raise ValueError(f"broken varint at byte {i}")

    i = 0
    while i < len(data):
        key, i = varint(i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError(f"field number 0 at byte {i}")
        if wire == 0:
            _, i = varint(i)
        elif wire == 1:
            i += 8
        elif wire == 2:
            length, i = varint(i)
            i += length
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wire} at byte {i}")
        if i > len(data):
            raise ValueError("truncated")
        yield number


# TFLite interpreters, lightest first; TensorFlow's own (the convert extra) is the last resort.
_TFLITE_INTERPRETERS = (
    ("tflite_runtime.interpreter", "tflite-runtime"),
    ("ai_edge_litert.interpreter", "LiteRT"),
    ("tensorflow.lite", "TensorFlow Lite"),
)

# Run in a child Python: tflite-runtime 2.14 dies with SIGSEGV on a truncated model file (seen here),
# and a user's damaged file must be a message, not the end of pibake.
_READ_SHAPES = """
import importlib, json, sys
for module_name, runtime in json.loads(sys.argv[2]):
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        continue
    try:
        interpreter = module.Interpreter(model_path=sys.argv[1])
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    except (ValueError, RuntimeError) as exc:
        print(json.dumps({"runtime": runtime, "error": str(exc)}))
        sys.exit(0)
    shapes = lambda details: [[int(x) for x in d["shape"]] for d in details]
    print(json.dumps({"runtime": runtime, "inputs": shapes(inputs), "outputs": shapes(outputs)}))
    sys.exit(0)
print(json.dumps({"runtime": None}))
"""


# Run in a child Python too, with the Pi-side package's own loader (target/pibake_target/runtimes.py): onnxruntime,
# the shapes as the Pi will see them (a dynamic batch dimension as 1), and its refusals (other dynamic dimensions).
_READ_ONNX_SHAPES = """
import json, sys
from pibake_target.errors import ModelError
from pibake_target.runtimes import load_onnx
try:
    session, runtime = load_onnx(sys.argv[1], 1)
except ModelError as exc:
    print(json.dumps({"runtime": "onnxruntime", "error": str(exc)}))
    sys.exit(0)
shapes = lambda details: [[int(x) for x in d["shape"]] for d in details]
print(json.dumps({"runtime": runtime, "inputs": shapes(session.get_input_details()),
                  "outputs": shapes(session.get_output_details())}))
"""


def _model_shapes(file: Path, fmt: str) -> tuple[tuple[int, ...], tuple[int, ...], str] | str:
    """(input shape, output shape, "<runtime>") of a TFLite or ONNX model (FMT "tflite" or "onnx"); a string saying
    why not when no runtime for it is importable here.

    The model is opened in a child process (see _READ_SHAPES, _READ_ONNX_SHAPES); UsageError when it cannot be
    loaded, or has other than one input and one output.
    """
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    if digest not in _SHAPES:
        _SHAPES[digest] = _read_onnx_shapes(file) if fmt == "onnx" else _read_tflite_shapes(file)
    return _SHAPES[digest]


# Shapes by the model's sha256: a child process per model per pibake run, not per load.
_SHAPES: dict[str, tuple[tuple[int, ...], tuple[int, ...], str] | str] = {}


def _read_tflite_shapes(file: Path) -> tuple[tuple[int, ...], tuple[int, ...], str] | str:
    if not any(importlib.util.find_spec(m.split(".")[0]) for m, _ in _TFLITE_INTERPRETERS):
        return (
            "no TFLite interpreter on this machine (tflite-runtime, ai-edge-litert or the convert extra's TensorFlow)"
        )
    argv = [sys.executable, "-c", _READ_SHAPES, str(file), json.dumps(_TFLITE_INTERPRETERS)]
    return _read_shapes(file, argv, {"TF_CPP_MIN_LOG_LEVEL": "2"}, "the TFLite interpreter")


def _read_onnx_shapes(file: Path) -> tuple[tuple[int, ...], tuple[int, ...], str] | str:
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed on this machine (pibake's test extra has it)"
    from pibake import resources

    argv = [sys.executable, "-B", "-c", _READ_ONNX_SHAPES, str(file)]
    return _read_shapes(file, argv, {"PYTHONPATH": resources.target_pythonpath()}, "onnxruntime")


def _read_shapes(
    file: Path, argv: list[str], env: dict[str, str], reader: str
) -> tuple[tuple[int, ...], tuple[int, ...], str] | str:
    """Run ARGV (_READ_SHAPES or _READ_ONNX_SHAPES on FILE) with ENV and read its JSON answer; READER names the
    runtime in the message when the child dies."""
    try:
        out = run(argv, env=env, timeout=300)
        answer = json.loads(out.strip().splitlines()[-1])
    except CommandFailed as e:
        how = f"signal {-e.returncode}" if e.returncode < 0 else f"exit {e.returncode}"
        raise UsageError(f"{file}: {reader} crashed loading it ({how}): the file is damaged") from e
    except (ValueError, IndexError) as e:
        raise PibakeError(f"reading {file}'s input and output shapes printed no JSON") from e
    runtime = answer["runtime"]
    if runtime is None:
        return "no TFLite interpreter could be imported on this machine"
    if "error" in answer:
        raise UsageError(f"{file}: {runtime} cannot load this model: {answer['error']}")
    inputs, outputs = answer["inputs"], answer["outputs"]
    if len(inputs) != 1 or len(outputs) != 1:
        raise UsageError(
            f"{file}: has {len(inputs)} inputs and {len(outputs)} outputs; pibake serves models with one image "
            "input and one output of class scores"
        )
    return tuple(inputs[0]), tuple(outputs[0]), str(runtime)


def _check_shapes(
    r: _Reader,
    file: Path,
    input_shape: tuple[int, ...],
    output_shape: tuple[int, ...],
    runtime: str,
    labels: tuple[str, ...],
    pre: Preprocessing,
    *,
    converted_from: str | None = None,
) -> None:
    said = f"{file.name} ({f'converted from {converted_from}, ' if converted_from else ''}read with {runtime})"
    if len(input_shape) != 4 or input_shape[3] != 3:
        raise r.error(
            "model.file",
            f"{said} takes input of shape {list(input_shape)}; pibake feeds images as [1, height, width, 3]",
        )
    if pre.size is not None and (input_shape[2], input_shape[1]) != pre.size:
        raise r.error(
            "model.preprocessing.size",
            f"is {list(pre.size)} but {said} takes {input_shape[2]}x{input_shape[1]} images "
            f"(input shape {list(input_shape)})",
        )
    if not output_shape or output_shape[-1] != len(labels):
        raise r.error(
            "model.labels",
            f"{len(labels)} labels, but {said} has {output_shape[-1] if output_shape else 0} outputs "
            f"(output shape {list(output_shape)})",
        )


def _samples(r: _Reader, beside: Path) -> tuple[Path, ...]:
    key = "model.samples"
    entries = r.strings(key) if r.has(key) else [str(beside / "samples")]
    found: list[Path] = []
    for i, entry in enumerate(entries):
        where = key if isinstance(r.get(key), str) or not r.has(key) else f"{key}[{i}]"
        pattern = str(r.root / _expand(entry))
        if glob.has_magic(entry):
            # glob.glob, not Path.glob: the pattern may be absolute.
            found_paths = glob.glob(pattern, recursive=True)  # noqa: PTH207
            matched = sorted(Path(p).resolve() for p in found_paths if Path(p).is_file())
            if not matched:
                raise r.error(where, f"{entry!r} matches no file in {r.root}")
        elif Path(pattern).is_dir():
            directory = Path(pattern).resolve()
            matched = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in SAMPLE_SUFFIXES)
            if not matched:
                raise r.error(where, f"no {', '.join(SAMPLE_SUFFIXES)} files in {directory}")
        else:
            matched = [r.path(where, entry)]
        for sample in matched:
            with sample.open("rb") as f:
                head = f.read(8)
            if not (head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC)):
                raise r.error(where, f"{sample} is not a PNG or JPEG image (the service on the Pi takes only those)")
        found += [p for p in matched if p not in found]
    if not found:
        raise r.error(key, "no samples: bake compares this machine's outputs with the Pi's on them")
    return tuple(found)


def _decode_samples(r: _Reader, samples: tuple[Path, ...], skipped: list[str]) -> None:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        skipped.append("samples not decoded: Pillow is not installed here (only their PNG/JPEG signature checked)")
        return
    for sample in samples:
        try:
            with Image.open(sample) as img:
                img.load()
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            raise r.error("model.samples", f"cannot decode {sample}: {e}") from None


def _preprocessing(r: _Reader) -> Preprocessing:
    t = "model.preprocessing"
    r.table(t)
    size: tuple[int, int] | None = None
    raw = r.get(f"{t}.size")
    if raw is not None:
        if (
            not isinstance(raw, list)
            or len(raw) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in raw)
        ):
            raise r.error(f"{t}.size", f"must be [width, height], two positive integers, got {_kind(raw)} {raw!r}")
        size = (raw[0], raw[1])
    scale = r.number(f"{t}.scale", DEFAULT_SCALE)
    if scale <= 0:
        raise r.error(f"{t}.scale", f"must be > 0, got {scale}")
    mean = r.channels(f"{t}.mean", 0.0)
    std = r.channels(f"{t}.std", 1.0)
    if any(s <= 0 for s in std):
        raise r.error(f"{t}.std", f"must be > 0 (it divides), got {list(std)}")
    order = r.string(f"{t}.channel_order", "rgb")
    if order not in CHANNEL_ORDERS:
        raise r.error(f"{t}.channel_order", f'must be "rgb" or "bgr", got {order!r}')
    return Preprocessing(size, scale, mean, std, order)


# ---------------------------------------------------------------- [runtime] and [service]


def _runtime(r: _Reader, model: Model, target: Target) -> Runtime:
    name = r.string("runtime.name", AUTO_RUNTIME)
    version = r.string("runtime.version", "") or None
    if name == AUTO_RUNTIME:
        return Runtime(name, version)
    if name not in RUNTIMES:
        known = [AUTO_RUNTIME, *RUNTIMES]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(known)
        raise r.error("runtime.name", f"unknown runtime {name!r}; {hint}")
    formats, arches = RUNTIMES[name]
    if model.format not in formats:
        raise r.error("runtime.name", f"{name} does not run {model.format} models ({model.file.name})")
    if target.arch is not None and target.arch not in arches:
        raise r.error(
            "runtime.name", f"{name} has no wheels for {target.arch} (base {target.base}), only {', '.join(arches)}"
        )
    return Runtime(name, version)


def _service(r: _Reader, model: Model) -> Service:
    enabled = r.boolean("service.enabled", True)
    port = r.integer("service.port", DEFAULT_PORT, low=1, high=65535)
    name = r.string("service.model_name", "") or model.file.stem
    if not _MODEL_NAME.match(name):
        where = "service.model_name" if r.get("service.model_name") else "model.file"
        raise r.error(
            where, f"model name {name!r} is not a URL path segment (letters, digits, _ . -, 64 at most); set it"
        )
    return Service(enabled, port, name)


# ---------------------------------------------------------------- [system]


def _system(r: _Reader, environ: Mapping[str, str]) -> System:
    hostname = r.string("system.hostname", DEFAULT_HOSTNAME)
    if not _HOSTNAME.match(hostname):
        raise r.error(
            "system.hostname",
            f"{hostname!r} is not a host name: 1 to 63 letters, digits and hyphens, not starting or ending "
            "with a hyphen (RFC 1123)",
        )
    user = r.string("system.user", DEFAULT_USER)
    if not _USER.match(user) or user == "root":
        raise r.error("system.user", f"{user!r} is not a user name pibake creates (lower case, [a-z][-a-z0-9_]*)")
    keys: list[str] = []
    for i, entry in enumerate(r.strings("system.ssh_keys")):
        keys += _ssh_keys(r, f"system.ssh_keys[{i}]", entry)
    timezone = r.string("system.timezone", DEFAULT_TIMEZONE)
    if not _is_timezone(timezone):
        raise r.error("system.timezone", f"{timezone!r} is not an IANA time zone (e.g. Europe/London, Etc/UTC)")
    locale = r.string("system.locale", DEFAULT_LOCALE)
    if not _LOCALE.match(locale):
        raise r.error("system.locale", f"{locale!r} is not a locale name (e.g. en_GB.UTF-8, C.UTF-8)")
    packages = r.strings("system.packages")
    for i, package in enumerate(packages):
        if not _PACKAGE.match(package):
            raise r.error(f"system.packages[{i}]", f"{package!r} is not a Debian package name")
    wifi = _wifi(r, environ) if "wifi" in r.table("system") else None
    return System(hostname, user, tuple(keys), timezone, locale, wifi, tuple(packages))


def _is_timezone(name: str) -> bool:
    if name.startswith("/") or ".." in name:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        # No time zone data on this host at all: judge by the form only.
        return not zoneinfo.available_timezones() and bool(re.match(r"^[A-Za-z_+-]+(/[A-Za-z0-9_+-]+)*$", name))
    return True


def ssh_key_problem(line: str) -> str | None:
    """Why LINE is not an OpenSSH public key line ("TYPE BASE64 [COMMENT]"), or None.

    The base64 blob must decode, and must start with the key type it claims (RFC 4253, 6.6):
    a key pasted with a character missing or cut short fails here rather than at the first login.
    """
    fields = line.split()
    if len(fields) < 2:
        return "not an OpenSSH public key line (TYPE BASE64 [COMMENT])"
    kind, blob = fields[0], fields[1]
    if kind not in SSH_KEY_TYPES:
        return f"unknown key type {kind!r} (known: {', '.join(SSH_KEY_TYPES)})"
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return "its key data is not base64"
    if len(raw) < 4:
        return "its key data is too short"
    (length,) = struct.unpack(">I", raw[:4])
    if raw[4 : 4 + length] != kind.encode():
        return f"its key data is not a {kind} key (damaged or cut short?)"
    return None


def _ssh_keys(r: _Reader, key: str, entry: str) -> list[str]:
    """ENTRY as key lines: the line itself, or those of the file it names (comments and blanks skipped)."""
    first = entry.split(maxsplit=1)[0] if entry.strip() else ""
    if first in SSH_KEY_TYPES or " " in entry.strip():
        problem = ssh_key_problem(entry.strip())
        if problem:
            raise r.error(key, problem)
        return [entry.strip()]
    path = r.path(key, entry)
    lines = [x.strip() for x in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [x for x in lines if x and not x.startswith("#")]
    if not lines:
        raise r.error(key, f"{path} holds no public key")
    for n, line in enumerate(lines, 1):
        problem = ssh_key_problem(line)
        if problem:
            raise r.error(key, f"{path}, key {n}: {problem}")
    return lines


def psk_problem(psk: str) -> str | None:
    """Why PSK is not a WPA2 passphrase (8 to 63 printable ASCII characters) or raw key (64 hex digits), or None."""
    if len(psk) == 64 and all(c in "0123456789abcdefABCDEF" for c in psk):
        return None
    if not all(" " <= c <= "~" for c in psk):
        return "must be printable ASCII (or 64 hex digits)"
    if not 8 <= len(psk) <= 63:
        return f"must be 8 to 63 characters (or 64 hex digits); it has {len(psk)}"
    return None


def _wifi(r: _Reader, environ: Mapping[str, str]) -> WiFi:
    t = "system.wifi"
    country = r.string(f"{t}.country", None)
    if not _COUNTRY.match(country):
        raise r.error(f"{t}.country", f"{country!r} is not an ISO 3166 alpha-2 code (two capital letters, e.g. GB)")
    ssid = r.string(f"{t}.ssid", None)
    if not 1 <= len(ssid.encode()) <= 32:
        raise r.error(f"{t}.ssid", f"must be 1 to 32 bytes, it has {len(ssid.encode())}")
    if r.has(f"{t}.psk") and r.has(f"{t}.psk_env"):
        raise r.error(f"{t}.psk_env", f"set {t}.psk or {t}.psk_env, not both")
    psk: str | None = None
    if r.has(f"{t}.psk"):
        psk = r.string(f"{t}.psk", None)
        problem = psk_problem(psk)
        if problem:
            raise r.error(f"{t}.psk", problem)
    elif r.has(f"{t}.psk_env"):
        var = r.string(f"{t}.psk_env", None)
        if not _ENV_NAME.match(var):
            raise r.error(f"{t}.psk_env", f"{var!r} is not an environment variable name")
        if var not in environ:
            raise r.error(f"{t}.psk_env", f"the environment variable {var} is not set")
        psk = environ[var]
        problem = psk_problem(psk)
        if problem:
            raise r.error(f"{t}.psk_env", f"the passphrase in ${var} {problem}")
    return WiFi(country, ssid, psk)
