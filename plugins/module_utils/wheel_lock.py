# Copyright: pibake engineers
# MIT License (see galaxy.yml)
"""Runtime lock files: parse one, download its wheels for the target's platform, check every SHA-256.

A lock (roles/python_runtime/files/locks/<runtime>-<python>-<platform>.txt, written by `make locks`)
is a pip requirements file with one pin and one hash per package, and a few comment lines that
pip ignores and this module reads::

    # pibake-lock: python-version=3.13 implementation=cp abi=cp313 platform=manylinux_2_41_aarch64
    # pibake-lock: system=numpy>=1.23.2
    ai-edge-litert==2.3.0 \\
        --hash=sha256:0123...
        # file: ai_edge_litert-2.3.0-cp313-cp313-manylinux_2_27_aarch64.whl

The header gives pip's target options (``pip download --platform ... --python-version ...``), the
``file:`` comment names the wheel each hash belongs to, and ``system=`` lists what the lock leaves
to the distribution (numpy: the venv sees the distribution's through --system-site-packages).

One implementation serves the collection's wheel_lock module (on the controller and on the target,
standard library only, Python 3.8+) and the harness (``pibake wheels fetch``, via pibake._module_utils).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: collections.abc generics are not subscriptable at run time on 3.8
    from collections.abc import Callable, Sequence

HEADER = "# pibake-lock:"
FILE_COMMENT = "# file:"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.!+_-]+)$")
_HASH = re.compile(r"^--hash=sha256:([0-9a-f]{64})$")
_HEADER_KEYS = ("python-version", "implementation", "abi", "platform", "system")


class LockError(Exception):
    """The lock file cannot be read: a line that is not a pin, a hash or a comment, or a missing header."""


class HashMismatch(Exception):
    """A wheel's bytes are not the ones the lock pins: ``path``, ``expected`` and ``actual`` SHA-256 (hex)."""

    def __init__(self, path: Path, expected: str, actual: str) -> None:
        super().__init__(f"{path} has SHA-256 {actual}, but the lock pins {expected}")
        self.path = path
        self.expected = expected
        self.actual = actual


class MissingWheel(Exception):
    """A wheel the lock names is not where it should be (pip chose another file, or it was never copied)."""


@dataclass(frozen=True)
class Pin:
    """One locked package: ``name==version``, its allowed SHA-256 digests and, once narrowed, its wheel's file name."""

    name: str
    version: str
    hashes: tuple[str, ...]
    filename: str | None = None

    @property
    def key(self) -> str:
        """The name normalised as PEP 503 says (``Typing_Extensions`` -> ``typing-extensions``)."""
        return normalize(self.name)


@dataclass(frozen=True)
class Lock:
    """A parsed lock: pip's target options from the header, what the distribution provides, and the pins."""

    python_version: str
    implementation: str
    abi: str
    platforms: tuple[str, ...]
    system: tuple[str, ...]
    pins: tuple[Pin, ...]

    def pip_target_args(self) -> list[str]:
        """``pip download`` options that make pip choose the target's wheels rather than this machine's."""
        args = ["--only-binary=:all:", "--python-version", self.python_version, "--implementation", self.implementation]
        args += ["--abi", self.abi]
        for platform in self.platforms:
            args += ["--platform", platform]
        return args


def normalize(name: str) -> str:
    """A distribution name as PEP 503 normalises it: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(text: str, *, source: str = "lock") -> Lock:
    """Parse the TEXT of a lock file (SOURCE names it in errors).

    A pin may carry several hashes and no ``# file:`` comment (check_dir and fetch need one). Raises
    LockError for anything else: options (-i, -e, URLs), markers,
    a pin without a hash, a missing or incomplete ``# pibake-lock:`` header.
    """
    header: dict[str, list[str]] = {}
    pins: list[Pin] = []
    logical: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and stripped.startswith(HEADER):
            for item in stripped[len(HEADER) :].split():
                key, sep, value = item.partition("=")
                if not sep or key not in _HEADER_KEYS:
                    raise LockError(
                        f"{source}:{number}: unknown header item {item!r} (known: {', '.join(_HEADER_KEYS)})"
                    )
                header.setdefault(key, []).extend(v for v in value.split(",") if v)
            continue
        if not pending and stripped.startswith(FILE_COMMENT):
            logical.append((number, stripped))
            continue
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if not pending:
            start = number
        content = stripped.split(" #", 1)[0].strip()
        if content.endswith("\\"):
            pending += content[:-1] + " "
            continue
        logical.append((start, pending + content))
        pending = ""
    if pending:
        logical.append((start, pending))

    for number, line in logical:
        if line.startswith(FILE_COMMENT):
            if not pins or pins[-1].filename is not None:
                raise LockError(f"{source}:{number}: a '# file:' comment must follow the pin it belongs to")
            filename = line[len(FILE_COMMENT) :].strip()
            if "/" in filename or not filename.endswith(".whl"):
                raise LockError(f"{source}:{number}: '# file:' must name a wheel file, not {filename!r}")
            last = pins[-1]
            pins[-1] = Pin(last.name, last.version, last.hashes, filename)
            continue
        words = line.split()
        match = _PIN.match(words[0])
        if not match:
            raise LockError(
                f"{source}:{number}: {words[0]!r} is not a name==version pin (a lock holds only pins with "
                "--hash=sha256 options: regenerate it with `make locks`)"
            )
        hashes = []
        for word in words[1:]:
            hash_match = _HASH.match(word)
            if not hash_match:
                raise LockError(f"{source}:{number}: {word!r} is not a --hash=sha256:<64 hex digits> option")
            hashes.append(hash_match.group(1))
        if not hashes:
            raise LockError(f"{source}:{number}: {words[0]} has no --hash=sha256: every pin needs one")
        pins.append(Pin(match.group(1), match.group(2), tuple(hashes)))

    missing = [k for k in ("python-version", "implementation", "abi", "platform") if not header.get(k)]
    if missing:
        raise LockError(f"{source}: the '{HEADER}' header lacks {', '.join(missing)}: regenerate it with `make locks`")
    if not pins:
        raise LockError(f"{source}: no pins")
    seen = set()
    for pin in pins:
        if pin.key in seen:
            raise LockError(f"{source}: {pin.name} is pinned twice")
        seen.add(pin.key)
    return Lock(
        python_version=header["python-version"][-1],
        implementation=header["implementation"][-1],
        abi=header["abi"][-1],
        platforms=tuple(header["platform"]),
        system=tuple(header.get("system", [])),
        pins=tuple(pins),
    )


def read(path: Path) -> Lock:
    """Parse the lock file at PATH (see parse). Raises LockError, or OSError when it cannot be read."""
    return parse(Path(path).read_text(encoding="utf-8"), source=str(path))


def sha256_of(path: Path) -> str:
    """The SHA-256 of the file at PATH, in hex; read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _wheel_name(filename: str) -> tuple[str, str]:
    """(normalised name, version) from a wheel's file name (PEP 427: name-version-...whl)."""
    parts = filename.split("-")
    return normalize(parts[0]), parts[1]


def check_dir(lock: Lock, directory: Path) -> list[tuple[Pin, Path, str]]:
    """Check that DIRECTORY holds every pin's wheel (by its ``# file:`` name) with a locked SHA-256.

    Returns (pin, path, sha256) per pin. Raises MissingWheel for a pin without a file name or whose
    file is absent, HashMismatch for a file whose digest is not among the pin's hashes.
    """
    found = []
    for pin in lock.pins:
        if pin.filename is None:
            raise MissingWheel(f"{pin.name}=={pin.version} names no wheel file ('# file:'): regenerate the lock")
        path = Path(directory) / pin.filename
        if not path.is_file():
            raise MissingWheel(f"{path} is missing")
        actual = sha256_of(path)
        if actual not in pin.hashes:
            raise HashMismatch(path, " or ".join(pin.hashes), actual)
        found.append((pin, path, actual))
    return found


def fetch(
    lock: Lock,
    cache: Path,
    *,
    pip: Sequence[str],
    run: Callable[[Sequence[str]], object],
) -> tuple[list[tuple[Pin, Path, str]], list[str]]:
    """Download the wheels of LOCK that CACHE lacks, check each SHA-256, and keep only those that match.

    PIP is the command that runs pip (``[python, "-m", "pip"]``); RUN runs an argv and raises on
    failure. pip downloads with the lock's target options and no index of its own: the default
    index, or PIP_INDEX_URL / PIP_FIND_LINKS / pip.conf. Wheels already in CACHE with the right
    digest are not downloaded again; a wheel in CACHE with a wrong digest is deleted and downloaded
    afresh. New files land in a private directory inside CACHE and are renamed into place only after
    their digest matched, so an interrupted or refused run leaves nothing a later run would trust.

    Returns ((pin, path, sha256) for every pin, file names downloaded). Raises HashMismatch (the
    downloaded file is deleted), MissingWheel (pip chose another file than the lock names), and
    whatever RUN raises when pip fails.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    todo = []
    for pin in lock.pins:
        if pin.filename is None:
            raise MissingWheel(f"{pin.name}=={pin.version} names no wheel file ('# file:'): regenerate the lock")
        path = cache / pin.filename
        if path.is_file():
            if sha256_of(path) in pin.hashes:
                continue
            path.unlink()  # tampered or truncated: never trusted again
        todo.append(pin)
    if not todo:
        return check_dir(lock, cache), []

    downloaded = []
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=str(cache)))
    try:
        requirements = staging / "requirements.txt"
        # Only name==version: pip chooses the target's wheel as it did when the lock was made, and the
        # digests are checked here, against the file the lock names, with a message that says which.
        requirements.write_text("".join(f"{pin.name}=={pin.version}\n" for pin in todo), encoding="utf-8")
        wheels = staging / "wheels"
        argv = [*pip, "download", "--no-deps", "--disable-pip-version-check", "--progress-bar", "off"]
        run([*argv, *lock.pip_target_args(), "--dest", str(wheels), "-r", str(requirements)])
        got: dict[tuple[str, str], Path] = {}
        for path in wheels.iterdir() if wheels.is_dir() else []:
            if path.name.endswith(".whl"):
                got[_wheel_name(path.name)] = path
        for pin in todo:
            if (pin.key, pin.version) not in got:
                raise MissingWheel(
                    f"pip downloaded no wheel for {pin.name}=={pin.version} for {', '.join(lock.platforms)}"
                )
            path = got[(pin.key, pin.version)]
            actual = sha256_of(path)
            if actual not in pin.hashes:
                raise HashMismatch(Path(path.name), " or ".join(pin.hashes), actual)
            if path.name != pin.filename:
                raise MissingWheel(
                    f"pip chose {path.name} for {pin.name}=={pin.version}, the lock names {pin.filename}"
                )
        for pin in todo:
            path = got[(pin.key, pin.version)]
            path.replace(cache / path.name)
            downloaded.append(path.name)
    finally:
        shutil.rmtree(str(staging), ignore_errors=True)
    return check_dir(lock, cache), downloaded
