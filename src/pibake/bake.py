"""`pibake bake`: a project file (pibake.toml) to a finished card image with its report.

Stages, in order, each timed for the report: convert (a Keras model only: to TFLite on this machine, into the
project's build/, cached by the Keras file's sha256; see pibake.convert), image (build the Debian base or take the
project's image), prepare (a copy, for the board and the profile), boot (the board's own core, cold: the copy is the
card), provision (pibake's site.yml with the project's model, then the project's system settings, playbooks and
roles), verify (the model on every sample on this machine and on the emulated Pi, compared within the tolerance; the
inference service asked the same), shutdown, finalize (identity reset, .sha256, .bmap, manifest). The image is
published (renamed from ``.part``) only when the guest shut down cleanly and every sample passed; the report is
written in every case, so a failing bake says why in ``report.md``.

What the harness does not carry yet is refused before any work, naming the key: a board no machine profile
emulates (the ARMv6 pi1 and pi-zero), a local image or Raspberry Pi OS release whose userland (Debian release and
dpkg architecture) has no pinned runtime (USERLAND_BASES: such a base gets the runtimes of the Debian base with its
userland; a release is downloaded and checked first, image.fetch), ONNX models anywhere but on a trixie arm64
userland (onnxruntime has no armv7l wheels), a
preprocessing size other than the model's input size, Wi-Fi on a board without Wi-Fi or on a base that configures
its network with neither ifupdown (pibake's Debian bases) nor NetworkManager (Raspberry Pi OS from bookworm on), the
two ways bake writes it (wifi_method). system.user is the login the image is prepared with
(on the Debian bases a new account beside ``pi``; on Raspberry Pi OS the first user, by userconf.txt or cloud-init)
and the user the boot and Ansible log in as. Any other
[model.preprocessing] is carried: a preprocessing.json beside the model (stage_model), which the Pi-side package
reads on the Pi and here. Keras models are converted to TFLite on this machine first (pibake.convert, the convert
extra).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pibake import boards, convert, kernel, preflight, project, report, resources
from pibake._module_utils import wheel_lock
from pibake.disk.ext4 import ExtFs
from pibake.emulate import guest as emulator
from pibake.emulate import profiles, sshkey
from pibake.emulate.boot import image_arch, needs_pibake_kernel, read_config_txt
from pibake.emulate.ssh import ssh_run
from pibake.errors import CommandFailed, PibakeError, ToolMissing, UsageError, VerificationFailed
from pibake.image import build as image
from pibake.image import finalize, imager, prepare
from pibake.provision import provision
from pibake.util import progress
from pibake.util.cache import cache_root, sha256_file
from pibake.util.proc import last_json_object, run

log = logging.getLogger(__name__)

# Where the model role keeps versions on the Pi (roles/model/defaults/main.yml: model_root).
MODEL_ROOT = "/opt/pibake/model"
GUEST_PACKAGE_DIR = "/usr/local/lib/pibake"
MODEL_DIR = f"{MODEL_ROOT}/current"
# The inference service's port on the guest (pibake.raspberry.inference_service), forwarded by the emulator.
SERVICE_PORT = 8000
# The runtime python_runtime pins for the Debian bullseye armhf base (roles/python_runtime/defaults/main.yml).
RUNTIME = "tflite-runtime"
RUNTIME_VERSION = "2.11.0"
SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg")
# The file beside the model that says how images become its input: the Pi-side package reads it (its name and keys
# are target/pibake_target/preprocess.py's PREPROCESSING_FILE and read_preprocessing's), the model role deploys it.
PREPROCESSING_FILE = "preprocessing.json"
# The Debian bases whose runtimes come from a lock (`make locks`, scripts/lock_runtimes.py) into the venv: each
# runtime and its lock in resources.LOCK_DIR, the one for TFLite models first (platform_runtime's default).
# tflite-runtime 2.14.0 is its last release and the only one with a cp311 armv7l wheel (PyPI, 2026-11-30:
# tflite_runtime-2.14.0-cp311-cp311-manylinux_2_34_armv7l); LiteRT and onnxruntime have aarch64 wheels only
# (DESIGN.md: no LiteRT or onnxruntime for armv7l), so ONNX models are baked on the arm64 base alone.
LOCKED_RUNTIMES: dict[str, dict[str, str]] = {
    "debian-trixie-arm64": {
        "ai-edge-litert": "ai-edge-litert-3.13-debian-trixie-arm64.txt",
        "onnxruntime": "onnxruntime-3.13-debian-trixie-arm64.txt",
    },
    "debian-bookworm-armhf": {"tflite-runtime": "tflite-runtime-3.11-debian-bookworm-armhf.txt"},
}
# The legacy base: the python_runtime role's single pinned wheel, no lock.
LEGACY_BASE = "debian-bullseye"
# The Python of the venv a lock is installed into (roles/python_runtime/defaults/main.yml: python_runtime_venv).
VENV_PYTHON = "/opt/pibake/venv/bin/python"


@dataclass(frozen=True)
class PlatformRuntime:
    """A runtime on a Debian base: its name and version, the lock it is installed from (None: the role's single
    pinned wheel into the system Python, bullseye), and the Python on the Pi that runs it."""

    name: str
    version: str
    lock: str | None
    python: str
    # The lock's wheel files (the bullseye wheel's name for the legacy base), read with the version.
    wheel_filenames: tuple[str, ...]


def base_runtimes(base: str) -> tuple[str, ...]:
    """The runtimes pibake installs on the Debian base BASE (image.build.BASES), the one for TFLite models first:
    ("ai-edge-litert", "onnxruntime") on trixie arm64, ("tflite-runtime",) on the armhf bases; () for another."""
    if base == LEGACY_BASE:
        return (RUNTIME,)
    return tuple(LOCKED_RUNTIMES.get(base, ()))


def format_runtimes(base: str, model_format: str) -> tuple[str, ...]:
    """The runtimes of BASE that run models of MODEL_FORMAT (project.MODEL_FORMATS' values: "tflite", "onnx"), in
    base_runtimes' order (a Keras model's are the TFLite ones: it runs converted); () when BASE has none for it
    (ONNX on the armhf bases)."""
    return tuple(r for r in base_runtimes(base) if model_format in project.RUNTIMES[r][0])


def platform_runtime(base: str, runtime: str | None = None) -> PlatformRuntime:
    """The runtime RUNTIME (a project.RUNTIMES name; None: the base's runtime for TFLite models) on the Debian base
    BASE (image.build.BASES): from its lock into the venv (LOCKED_RUNTIMES: LiteRT or onnxruntime on trixie arm64,
    tflite-runtime 2.14.0 on bookworm armhf; its version is the lock's), tflite-runtime 2.11.0 in the system Python
    on bullseye. Raises UsageError for a base with no runtime here, or none called RUNTIME."""
    names = base_runtimes(base)
    if not names:
        raise UsageError(f"no runtime is pinned for base {base!r}")
    name = runtime or names[0]
    if name not in names:
        raise UsageError(f"base {base!r} has no {name} pinned, only {', '.join(names)}")
    if base == LEGACY_BASE:
        wheel = f"tflite_runtime-{RUNTIME_VERSION}-cp39-cp39-manylinux2014_armv7l.whl"
        return PlatformRuntime(RUNTIME, RUNTIME_VERSION, None, "python3", (wheel,))
    lock = LOCKED_RUNTIMES[base][name]
    # Read once: the runtime's version and every wheel's file.
    pins = wheel_lock.read(resources.LOCK_DIR / lock).pins
    version = {p.key: p for p in pins}[name].version
    return PlatformRuntime(name, version, lock, VENV_PYTHON, tuple(p.filename for p in pins if p.filename))


# A local image takes the pinned runtimes of the Debian base with its userland: the same Debian release (os-release's
# VERSION_CODENAME; Raspberry Pi OS names the Debian release it is built on) and dpkg architecture, so the same Python
# and glibc the base's locks were resolved for (scripts/lock_runtimes.py).
USERLAND_BASES: dict[tuple[str, str], str] = {
    ("bullseye", "armhf"): LEGACY_BASE,
    ("bookworm", "armhf"): "debian-bookworm-armhf",
    ("trixie", "arm64"): "debian-trixie-arm64",
}


def image_userland(image: Path) -> tuple[str, str]:
    """(VERSION_CODENAME, dpkg architecture) of IMAGE's root filesystem (partition 2), read without mounting:
    ("bookworm", "armhf") for Raspberry Pi OS bookworm 32-bit. An empty string for what the image does not say (no
    os-release, no dpkg status, or no partition 2 with an ext4 filesystem). The architecture is dpkg's own package's
    (image.imager.image_architecture), the userland's: a Pi 4 runs a 32-bit userland on a 64-bit kernel.

    Read once per version of the file (its path, size and mtime): unsupported, runtime_name, project_runtime and the
    report all ask for it during one bake, and dpkg's status is megabytes read through debugfs."""
    codename, arch, _ = _read_root(image)
    return codename, arch


def image_packages(image: Path) -> frozenset[str]:
    """Names of the packages installed in IMAGE's root filesystem (its dpkg status, read without mounting; empty when
    it has none). Read once per version of the file, with image_userland."""
    return _read_root(image)[2]


def _read_root(image: Path) -> tuple[str, str, frozenset[str]]:
    """_image_root for the current version of IMAGE (its path, size and mtime: the cache's key); nothing for none."""
    try:
        st = image.stat()
    except OSError:
        return "", "", frozenset()
    return _image_root(image.resolve(), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _image_root(image: Path, size: int, mtime_ns: int) -> tuple[str, str, frozenset[str]]:
    try:
        files = ExtFs.partition(image, 2).read_many(["/etc/os-release", "/usr/lib/os-release", "/var/lib/dpkg/status"])
    except PibakeError:
        return "", "", frozenset()
    release = files["/etc/os-release"] or files["/usr/lib/os-release"] or b""
    codename = prepare.parse_os_release(release.decode(errors="replace")).get("VERSION_CODENAME", "")
    status = files["/var/lib/dpkg/status"]
    packages = finalize.parse_dpkg_status(status.decode(errors="replace")) if status else []
    arch = imager.image_architecture(packages) if packages else ""
    return codename, arch, frozenset(p["name"] for p in packages)


def release_userland(name: str) -> tuple[str, str]:
    """(Debian suite, architecture) of the Raspberry Pi OS release NAME: ("trixie", "arm64") for trixie-arm64-lite.

    Read from the name when it says the suite (SUITE-ARCH[-VARIANT], or a file stem with its date), else (latest-ARCH
    aliases) from the release the OS list names for it (image.catalogue.load: cached a day, $PIBAKE_OS_LIST_URL);
    raises UsageError for a name the list does not have, PibakeError when no list can be had."""
    from pibake.image import catalogue

    parsed = catalogue.name_from_filename(name + ".img.xz")
    if parsed is not None and parsed[1] in catalogue.DEBIAN_SUITES:
        return parsed[1], parsed[2]
    tokens = name.split("-")
    if len(tokens) >= 2 and tokens[0] in catalogue.DEBIAN_SUITES and tokens[1] in catalogue.ARCHITECTURES:
        return tokens[0], tokens[1]
    entry = catalogue.load().lookup(name)
    return entry.suite, entry.arch


def base_userland(proj: project.Project) -> tuple[str, str]:
    """(Debian suite, architecture) of PROJ's base when it is not pibake's: a local image's (image_userland), a
    Raspberry Pi OS release's (release_userland); ("", "") for a Debian base or what cannot be read."""
    if proj.target.base_kind == "raspios":
        return release_userland(proj.target.base)
    if proj.target.base_image is not None:
        return image_userland(proj.target.base_image)
    return "", ""


def runtime_base(proj: project.Project) -> str:
    """The Debian base whose runtimes PROJ's image gets: its own, or for a local image or a Raspberry Pi OS release
    the one with its userland (USERLAND_BASES by base_userland); "" for one whose userland has none (unsupported says
    so)."""
    if proj.target.base_kind == "debian":
        return proj.target.base
    return USERLAND_BASES.get(base_userland(proj), "")


def runtime_name(proj: project.Project) -> str | None:
    """The runtime PROJ's model runs with: ``runtime.name`` where its base has it for the model's format, for "auto"
    the base's first that runs the format (LiteRT for .tflite, onnxruntime for .onnx on trixie arm64); None when
    there is none (the format has no runtime on the base, or ``runtime.name`` names another: unsupported says
    which)."""
    fits = format_runtimes(runtime_base(proj), proj.model.format)
    if proj.runtime.name == project.AUTO_RUNTIME:
        return fits[0] if fits else None
    return proj.runtime.name if proj.runtime.name in fits else None


def project_runtime(proj: project.Project) -> PlatformRuntime:
    """The runtime PROJ's image gets (runtime_name) on its base (runtime_base), with its lock and version.

    Raises UsageError when there is none for the project (unsupported lists why before bake calls this)."""
    name = runtime_name(proj)
    if name is None:
        raise UsageError(
            f"no runtime for {proj.model.file.name} ({proj.model.format}, runtime.name = {proj.runtime.name!r}) "
            f"on base {runtime_base(proj)}"
        )
    return platform_runtime(runtime_base(proj), name)


@dataclass(frozen=True)
class BakeResult:
    """What a bake left in the project's build directory: the image (None unless it passed) and the report."""

    report: report.BakeReport
    image: Path | None
    report_md: Path
    report_html: Path


def unsupported(proj: project.Project, *, profile: str | None = None) -> list[str]:
    """Why PROJ cannot be baked yet, one line per key (empty: it can). Checked before any work.

    PROFILE is the machine profile the user chose (bake's --profile); without one, a board that no profile emulates
    (the ARMv6 pi1 and pi-zero) is refused here, by its key, rather than by boards.emulation, which names neither
    the file nor the key.
    """
    problems = []
    t, m, s = proj.target, proj.model, proj.system
    board = boards.get(t.board)
    if profile is None and board.profile is None:
        problems.append(
            f"target.board = {t.board!r}: bake proves the image on the board's emulated core, and {board.emulation}"
        )
    base = runtime_base(proj)
    if t.base_kind != "debian" and not base:
        codename, arch = base_userland(proj)
        if t.base_kind == "raspios":
            found = f"it is Raspberry Pi OS on Debian {codename} {arch}"
        elif codename or arch:
            found = f"its userland is Debian {codename or '(no VERSION_CODENAME)'} {arch or '(no dpkg architecture)'}"
        else:
            found = (
                "it holds no Debian userland pibake can read (no os-release and dpkg status on its second partition)"
            )
        userlands = ", ".join(f"{c} {a}" for c, a in USERLAND_BASES)
        problems.append(
            f"target.base = {t.base!r}: {found}; bake has runtimes pinned for {userlands} only. Use a base of those "
            f"(or pibake's own: {', '.join(sorted(USERLAND_BASES.values()))})"
        )
    # A Keras model fits where a .tflite does: bake converts it first (prepare_model).
    fits = format_runtimes(base, m.format)
    if base and not fits:
        runtimes = sorted(r for r, (formats, _) in project.RUNTIMES.items() if m.format in formats)
        bases = sorted(b for b in (*LOCKED_RUNTIMES, LEGACY_BASE) if format_runtimes(b, m.format))
        arches = sorted({a for r in runtimes for a in project.RUNTIMES[r][1]})
        problems.append(
            f"model.file: {m.file.name}: bake runs .{m.format} models with {' or '.join(runtimes)} on target.base = "
            f"{' or '.join(f'{b!r}' for b in bases)} only; {' and '.join(runtimes)} has wheels for "
            f"{', '.join(arches)} only (none for armv7l on PyPI), so no 32-bit base can carry it"
        )
    # scale, mean, std and channel_order are carried (preprocessing_json); the Pi resizes to the model's input size.
    pre = m.preprocessing
    if m.input_shape is not None and pre.size is not None and tuple(pre.size) != _input_size(m.input_shape):
        problems.append(f"model.preprocessing.size: {list(pre.size)} is not the model's input size")
    if fits:
        # The runtime named, where the base runs the model's format with it; else the one it would get (auto).
        rt = platform_runtime(base, proj.runtime.name if proj.runtime.name in fits else fits[0])
        if proj.runtime.name not in (project.AUTO_RUNTIME, rt.name) or proj.runtime.version not in (None, rt.version):
            gets = {
                "debian": f"the {t.base} base runs",
                "raspios": f"Raspberry Pi OS {t.base}, with {base}'s userland, runs",
            }.get(t.base_kind, f"a local image with {base}'s userland runs")
            problems.append(f"runtime: {gets} .{m.format} models with {rt.name} {rt.version} only")
    if s.wifi is not None and not board.wifi:
        problems.append(
            f"system.wifi: target.board = {t.board!r} ({board.model}) has no Wi-Fi on board; remove [system.wifi] "
            "(a USB Wi-Fi adapter needs firmware of its own, which bake does not install)"
        )
    elif s.wifi is not None:
        method = wifi_method(proj)
        if method is None:
            what = "Raspberry Pi OS before bookworm" if t.base_kind == "raspios" else "the local image"
            problems.append(
                f"system.wifi: {what} configures its network with neither NetworkManager nor ifupdown (Raspberry Pi "
                "OS before bookworm: dhcpcd), and bake writes Wi-Fi for those two only"
            )
        else:
            problem = (ifupdown_ssid_problem if method == "ifupdown" else networkmanager_ssid_problem)(s.wifi.ssid)
            if problem:
                problems.append(f"system.wifi.ssid: {problem}")
    bad = [p.name for p in m.samples if p.suffix.lower() not in SAMPLE_SUFFIXES]
    if bad:
        problems.append(f"model.samples: the Pi-side package reads PNG and JPEG images, not {', '.join(bad)}")
    return problems


def prepare_model(proj: project.Project) -> tuple[project.Project, convert.Conversion | None]:
    """PROJ as bake runs its model, and the conversion that made it (None: nothing to convert).

    A Keras model.file (.keras or .h5) becomes the float32 TFLite model PROJ.root/build/<stem>.tflite
    (pibake.convert.to_tflite: TensorFlow in a child Python, nothing converted while the Keras file's sha256 is the
    one recorded beside it), and the project returned names it, format "tflite", checked against the labels and
    model.preprocessing.size as `project.load` checks a .tflite (project.with_model); labels, samples and every other
    setting are PROJ's, so the host reference, the runtime (LiteRT or tflite-runtime, by base) and the model role
    all take the .tflite. A .tflite or .onnx project is returned as it is.

    Raises ToolMissing, naming the convert extra, when TensorFlow is not importable here and there is no conversion
    to reuse; UsageError when the file is not a Keras model Keras loads (its name and the reason) or the result does
    not fit the labels or size; VerificationFailed when the result is not fit for the Pi (pibake.convert.keras).
    """
    if proj.model.format != "keras":
        return proj, None
    conversion = convert.to_tflite(proj.model.file, proj.build_dir)
    return project.with_model(proj, conversion.tflite), conversion


def _input_size(shape: tuple[int, ...]) -> tuple[int, int]:
    """(width, height) of an NHWC input shape."""
    return (shape[2], shape[1]) if len(shape) == 4 else (0, 0)


def preprocessing_json(pre: project.Preprocessing) -> str | None:
    """PRE as the Pi-side package's preprocessing.json (PREPROCESSING_FILE), one line of JSON: {"scale": float,
    "mean": [r, g, b], "std": [r, g, b], "channel_order": "rgb" | "bgr"}; None for the default (scale 1/255, mean 0,
    std 1, rgb), which the package applies to a model without the file. ``size`` is not in it: the Pi resizes to the
    model's input size, and unsupported refuses another."""
    values = (pre.scale, tuple(pre.mean), tuple(pre.std), pre.channel_order)
    if values == (project.DEFAULT_SCALE, (0.0,) * 3, (1.0,) * 3, "rgb"):
        return None
    # JSON numbers as repr writes them: read back, they are the same doubles.
    spec = {"scale": pre.scale, "mean": list(pre.mean), "std": list(pre.std), "channel_order": pre.channel_order}
    return json.dumps(spec) + "\n"


def model_version(proj: project.Project) -> str:
    """The version name of the project's model on the Pi: its file's stem and the first 12 hex of a digest over the
    model, labels, samples and preprocessing.json where there is one (a changed file is a new version; the model role
    never changes a deployed one). A project with the default preprocessing keeps the name it had before the file."""
    h = hashlib.sha256()
    for path in (proj.model.file, proj.model.labels_file, *proj.model.samples):
        h.update(path.name.encode() + b"\0" + sha256_file(path).encode() + b"\n")
    spec = preprocessing_json(proj.model.preprocessing)
    if spec is not None:
        h.update(PREPROCESSING_FILE.encode() + b"\0" + hashlib.sha256(spec.encode()).hexdigest().encode() + b"\n")
    stem = "".join(c if c.isalnum() or c in "._+-" else "-" for c in proj.model.file.stem)[:40] or "model"
    return f"{stem}-{h.hexdigest()[:12]}"


def stage_model(proj: project.Project, directory: Path) -> str:
    """Lay the project's model out as the model role reads it (VERSION, the model, labels.txt, preprocessing.json
    unless the preprocessing is the default, samples/) in DIRECTORY (replaced); return the version name."""
    version = model_version(proj)
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "samples").mkdir(parents=True)
    (directory / "VERSION").write_text(version + "\n")
    shutil.copyfile(proj.model.file, directory / proj.model.file.name)
    shutil.copyfile(proj.model.labels_file, directory / "labels.txt")
    spec = preprocessing_json(proj.model.preprocessing)
    if spec is not None:
        (directory / PREPROCESSING_FILE).write_text(spec)
    for sample in proj.model.samples:
        shutil.copyfile(sample, directory / "samples" / sample.name)
    return version


# The Pi's Wi-Fi interface: brcmfmac on SDIO, which udev's predictable names leave as wlan0 (Debian's own Pi images
# write /etc/network/interfaces.d/wlan0 for it).
WIFI_INTERFACE = "wlan0"


def wpa_psk(passphrase: str, ssid: str) -> str:
    """The 256-bit WPA key for PASSPHRASE on the network SSID, in 64 hex digits, as wpa_passphrase(8) prints it:
    PBKDF2-HMAC-SHA1 over the passphrase with the SSID as salt, 4096 rounds (IEEE 802.11i, H.4). A PASSPHRASE that
    is already 64 hex digits is a key and comes back as it is (lower case)."""
    if len(passphrase) == 64 and all(c in "0123456789abcdefABCDEF" for c in passphrase):
        return passphrase.lower()
    return hashlib.pbkdf2_hmac("sha1", passphrase.encode(), ssid.encode(), 4096, 32).hex()


def ifupdown_ssid_problem(ssid: str) -> str | None:
    """Why SSID cannot be written as ifupdown's ``wpa-ssid`` option, or None. ifupdown reads the option's value to
    the end of the line, strips the whitespace around it and joins a line ending in a backslash to the next; the
    wpasupplicant hook strips one pair of surrounding double quotes."""
    if any(ord(c) < 32 or ord(c) == 127 for c in ssid):
        return "has a control character, which /etc/network/interfaces cannot carry"
    if ssid != ssid.strip():
        return "starts or ends with a space, which ifupdown strips from /etc/network/interfaces values"
    if ssid.endswith("\\"):
        return "ends with a backslash, which ifupdown reads as a line continuation"
    if len(ssid) >= 2 and ssid[0] == ssid[-1] == '"':
        return "is in double quotes, which the wpasupplicant hook for ifupdown strips"
    return None


def ifupdown_wifi_stanza(wifi: project.WiFi) -> str:
    """/etc/network/interfaces.d/wlan0 for WIFI, in Debian's wpasupplicant "managed mode" (README.Debian): ifupdown
    starts wpa_supplicant on wlan0 and configures its network from the wpa-* options, then asks DHCP for an
    address. A passphrase is written as its derived key (wpa_psk), so the passphrase itself never reaches the card;
    an open network gets ``wpa-key-mgmt NONE``."""
    lines = [f"allow-hotplug {WIFI_INTERFACE}", f"iface {WIFI_INTERFACE} inet dhcp", f"    wpa-ssid {wifi.ssid}"]
    if wifi.psk is None:
        lines.append("    wpa-key-mgmt NONE")
    else:
        lines.append(f"    wpa-psk {wpa_psk(wifi.psk, wifi.ssid)}")
    return "\n".join(lines) + "\n"


def networkmanager_ssid_problem(ssid: str) -> str | None:
    """Why SSID cannot be written as text in a NetworkManager keyfile's ``ssid=``, or None. The keyfile is a GLib key
    file (nm-settings-keyfile(5)): its values end at the line's end and lose surrounding spaces, and NetworkManager
    reads a value with ``;`` in it as a list of byte values."""
    if any(ord(c) < 32 or ord(c) == 127 for c in ssid):
        return "has a control character, which a NetworkManager keyfile cannot carry as text"
    if ssid != ssid.strip():
        return "starts or ends with a space, which GLib's key files strip"
    if ";" in ssid:
        return "has a semicolon, which NetworkManager's keyfile reads as a list separator"
    return None


# Where bake writes [system.wifi] for NetworkManager; NetworkManager reads only owner-only, root-owned keyfiles there.
NETWORKMANAGER_CONNECTION = "/etc/NetworkManager/system-connections/pibake-wifi.nmconnection"


def networkmanager_wifi_connection(wifi: project.WiFi) -> str:
    """NETWORKMANAGER_CONNECTION for WIFI, in NetworkManager's keyfile format (nm-settings-keyfile(5)): a Wi-Fi
    connection on wlan0 that comes up by itself, DHCP and IPv6 autoconfiguration, as Raspberry Pi Imager's settings
    give Raspberry Pi OS. A passphrase is written as its derived key (wpa_psk: the ``psk`` setting takes 64 hex digits
    as the key itself), so the passphrase never reaches the card; an open network has no wifi-security section. The
    UUID is derived from the SSID, so the same project writes the same file."""
    ssid = wifi.ssid.replace("\\", "\\\\")  # a GLib key file escapes the backslash
    lines = [
        "# system.wifi, written by pibake bake",
        "[connection]",
        "id=pibake-wifi",
        f"uuid={uuid.uuid5(uuid.NAMESPACE_URL, 'pibake-wifi:' + wifi.ssid)}",
        "type=wifi",
        f"interface-name={WIFI_INTERFACE}",
        "autoconnect=true",
        "",
        "[wifi]",
        "mode=infrastructure",
        f"ssid={ssid}",
        "",
    ]
    if wifi.psk is not None:
        lines += ["[wifi-security]", "key-mgmt=wpa-psk", f"psk={wpa_psk(wifi.psk, wifi.ssid)}", ""]
    lines += ["[ipv4]", "method=auto", "", "[ipv6]", "addr-gen-mode=default", "method=auto"]
    return "\n".join(lines) + "\n"


# Raspberry Pi OS configures its network with NetworkManager from bookworm on (Raspberry Pi documentation,
# "Configuration: Networking"), with dhcpcd and wpa_supplicant.conf before.
NETWORKMANAGER_SINCE = "bookworm"


def wifi_method(proj: project.Project) -> str | None:
    """How PROJ's base configures its network, so where [system.wifi] goes: "ifupdown" (pibake's Debian bases, or a
    local image with ifupdown and no NetworkManager), "networkmanager" (Raspberry Pi OS bookworm and later, or a local
    image with network-manager installed); None when it is neither (unsupported says so)."""
    from pibake.image import catalogue

    t = proj.target
    if t.base_kind == "debian":
        return "ifupdown"
    if t.base_kind == "raspios":
        suite, _ = release_userland(t.base)
        order = catalogue.DEBIAN_SUITES
        return "networkmanager" if suite in order and order.index(suite) >= order.index(NETWORKMANAGER_SINCE) else None
    packages = image_packages(t.base_image) if t.base_image is not None else frozenset()
    if "network-manager" in packages:
        return "networkmanager"
    return "ifupdown" if "ifupdown" in packages else None


def wifi_vars(wifi: project.WiFi | None, method: str | None = "ifupdown") -> dict[str, object]:
    """playbooks/bake_system.yml's Wi-Fi variables for WIFI (None: none, nothing written), written the METHOD way
    (wifi_method)."""
    if wifi is None or method is None:
        return {"bake_wifi_enabled": False}
    return {
        "bake_wifi_enabled": True,
        "bake_wifi_method": method,
        "bake_wifi_country": wifi.country,
        # In the current bases and Raspberry Pi OS already (image.build.WIFI_PACKAGES); the playbook installs
        # whichever is missing.
        "bake_wifi_packages": list(image.WIFI_PACKAGES),
        "bake_wifi_interface": WIFI_INTERFACE,
        "bake_wifi_interfaces": ifupdown_wifi_stanza(wifi) if method == "ifupdown" else "",
        "bake_wifi_connection": networkmanager_wifi_connection(wifi) if method == "networkmanager" else "",
        "bake_wifi_connection_path": NETWORKMANAGER_CONNECTION,
    }


def provision_vars(
    proj: project.Project, source: Path, version: str, runtime: PlatformRuntime | None = None
) -> dict[str, object]:
    """Extra vars for site.yml and playbooks/bake_system.yml (JSON-able); RUNTIME's lock, when it has one."""
    current = f"{MODEL_ROOT}/current"
    suffixes = sorted({p.suffix.lower() for p in proj.model.samples})
    lock = {"python_runtime_lock": runtime.lock} if runtime and runtime.lock else {}
    return {
        **lock,
        "model_source_dir": str(source),
        "model_version": version,
        "model_file": proj.model.file.name,
        "model_labels_file": "labels.txt",
        "model_samples_glob": "samples/*" + (suffixes[0] if len(suffixes) == 1 else ""),
        "inference_service_install_enabled": proj.service.enabled,
        "inference_service_health_check_enabled": proj.service.enabled,
        "inference_service_model_path": f"{current}/{proj.model.file.name}",
        "inference_service_labels_path": f"{current}/labels.txt",
        "inference_service_model_name": proj.service.model_name,
        "inference_service_port": proj.service.port,
        "bake_user": proj.system.user,
        "bake_ssh_keys": list(proj.system.ssh_keys),
        "bake_timezone": proj.system.timezone,
        "bake_packages": list(proj.system.packages),
        "bake_locale": proj.system.locale,
        **wifi_vars(proj.system.wifi, wifi_method(proj) if proj.system.wifi is not None else None),
    }


# What the host's reference run imports for each model format, and where to get it: the packages the Pi-side package
# loads (target/pibake_target/runtimes.py), from pibake's extras (pyproject.toml).
HOST_RUNTIMES: dict[str, tuple[tuple[str, ...], str]] = {
    "tflite": (
        ("tflite_runtime", "ai_edge_litert"),
        "tflite-runtime (pibake's test extra: pip install -e '.[test]') or ai-edge-litert",
    ),
    "onnx": (
        ("onnxruntime",),
        "onnxruntime (pibake's test extra: pip install -e '.[test]', or pip install onnxruntime)",
    ),
}


def host_outputs(proj: project.Project, staged: Path | None = None) -> dict[str, object]:
    """The model on every sample on this machine (the reference), by the Pi-side package's predict command in a child
    Python, as on the Pi (a damaged model cannot take pibake down with it), with the runtime the Pi gets for the
    model's format (HOST_RUNTIMES: TFLite, or onnxruntime for .onnx):
    {"runtime": str, "results": [{"image", "label", "probability", "probabilities"}, ...]}.

    It runs on the files the model role deploys, STAGED (stage_model's layout; staged in a temporary directory when
    None), so the command finds the preprocessing.json the Pi gets beside the model, or none, as the Pi does.

    Raises ToolMissing, naming the package to install, when no runtime for the model's format is importable here;
    PibakeError when the run fails or prints no JSON.
    """
    modules, install = HOST_RUNTIMES.get(proj.model.format, ((), ""))
    if modules and not any(importlib.util.find_spec(m) for m in modules):
        raise ToolMissing(
            f"{proj.model.file}: the reference run on this machine needs {' or '.join(modules)}, which is not "
            f"installed: install {install}"
        )
    if staged is None:
        with tempfile.TemporaryDirectory(prefix="pibake-reference-") as tmp:
            stage_model(proj, Path(tmp) / "model")
            return host_outputs(proj, Path(tmp) / "model")
    argv = [sys.executable, "-B", "-m", "pibake_target", "predict", "--model", str(staged / proj.model.file.name)]
    argv += ["--labels", str(staged / "labels.txt"), *(str(staged / "samples" / p.name) for p in proj.model.samples)]
    try:
        out = run(argv, env={"PYTHONPATH": resources.target_pythonpath()}, timeout=600)
    except CommandFailed as e:
        raise PibakeError(f"{proj.model.file}: the model did not run on this machine:\n{e}") from e
    return _predict_report(out, "here")


def _predict_report(out: str, where: str) -> dict[str, object]:
    """The JSON object the predict command prints: the last line that is one (a runtime may chatter before and after
    it: LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on stderr, which SSH interleaves)."""
    result = last_json_object(out)
    if result is None:
        raise PibakeError(f"the predict command printed no JSON {where}:\n{out[-2000:]}")
    return result


def predict_on_guest(
    guest: emulator.Guest, model_dir: str = MODEL_DIR, *, model_file: str = "car.tflite", python: str = "python3"
) -> dict[str, object]:
    """The Pi-side package's predict command on GUEST over MODEL_DIR/samples/* (where pibake.raspberry.python_runtime
    installed it), run by PYTHON (the runtime's venv on the 64-bit base):
    {"runtime", "results": [{"image", "label", "probability", "probabilities"}, ...]}."""
    model = shlex.quote(f"{model_dir}/{model_file}")
    cmd = (
        f"PYTHONPATH={GUEST_PACKAGE_DIR} {shlex.quote(python)} -B -m pibake_target predict --model {model} "
        f"--labels {model_dir}/labels.txt {model_dir}/samples/*"
    )
    code, out = ssh_run(guest, cmd, timeout=300)
    if code != 0:
        raise PibakeError(f"the model did not run on the guest (exit {code}):\n{out[-2000:]}")
    return _predict_report(out, "on the guest")


def predict_with_service(
    guest: emulator.Guest, samples: list[Path], *, port: int = SERVICE_PORT
) -> list[dict[str, object]]:
    """POST each sample to the inference service on the guest, from this machine."""
    url = f"http://127.0.0.1:{guest.host_port(port)}/predict"
    answers: list[dict[str, object]] = []
    for sample in samples:
        req = urllib.request.Request(
            url, data=sample.read_bytes(), headers={"Content-Type": "image/png"}, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as reply:  # noqa: S310
                answer = json.loads(reply.read())
        except (OSError, ValueError) as e:
            raise PibakeError(
                f"the inference service on the guest did not answer /predict for {sample.name}: {e}"
            ) from e
        answers.append({"image": sample.name, **answer})
    return answers


def _vectors(outputs: dict[str, object], names: list[str], where: str) -> list[list[float]]:
    results = outputs.get("results")
    if not isinstance(results, list):
        raise PibakeError(f"the {where} run printed no results")
    by_image = {str(r.get("image")): r for r in results if isinstance(r, dict)}
    missing = [n for n in names if n not in by_image]
    if missing:
        raise PibakeError(f"the {where} run gave no output for {', '.join(missing)}")
    return [[float(x) for x in by_image[n]["probabilities"]] for n in names]


@contextmanager
def _stage(timings: dict[str, float], name: str, say: Callable[[str], None]) -> Iterator[None]:
    """Time stage NAME for the report; SAY when it starts and how long it took (and, on a terminal, a progress row
    counts its time meanwhile)."""
    say(f"{name}...")
    t0 = time.monotonic()
    try:
        with progress.step(name, logger=log):
            yield
    finally:
        timings[name] = time.monotonic() - t0
        say(f"{name}: {timings[name]:.0f} s")


def _fetch_release(proj: project.Project) -> tuple[Path, str]:
    """PROJ's Raspberry Pi OS release, downloaded and checked into the cache (image.fetch.fetch; cached after the
    first time), and the report's words for it. Raises VerificationFailed when the image's own userland is not the
    one its name promised (the runtimes were chosen by the name)."""
    from pibake.image import fetch

    got = fetch.fetch(release=proj.target.base)
    promised, found = release_userland(proj.target.base), image_userland(got.path)
    if found != promised:
        raise VerificationFailed(
            f"target.base = {proj.target.base!r}: the OS list's image {got.url} holds Debian {' '.join(found)}, not "
            f"{' '.join(promised)} as its name says; nothing was baked"
        )
    if proj.system.wifi is not None and "network-manager" not in image_packages(got.path):
        raise VerificationFailed(
            f"target.base = {proj.target.base!r}: the image has no network-manager installed, where Raspberry Pi OS "
            f"from {NETWORKMANAGER_SINCE} on configures its network, so [system.wifi] has nothing to read it"
        )
    state = "cached" if got.cached else ("verified" if got.verified else "NOT VERIFIED")
    release = (
        f"Raspberry Pi OS {got.release} of {got.release_date} (image sha256 {got.image_sha256}, {state}): "
        f"Debian {' '.join(found)} userland, {runtime_base(proj)}'s runtimes"
    )
    return got.path, release


def bake(
    proj: project.Project,
    *,
    profile: str | None = None,
    cpu: str | None = None,
    name: str = "pibake-bake",
    output: Path | None = None,
    collection: Path = resources.COLLECTION,
    say: Callable[[str], None] = log.info,
) -> BakeResult:
    """Bake PROJ into OUTPUT (default PROJ.root/build/STEM.img, STEM the model file's): the image with .sha256,
    .bmap and manifest beside it when every sample passed, and report.md/report.html there always. A Keras model is
    converted first, to PROJ.root/build/STEM.tflite (prepare_model), and baked as that .tflite.

    Raises UsageError for what `unsupported` lists (before any work), what prepare_model raises (ToolMissing without
    TensorFlow for a Keras model, before any other work) and PibakeError for a stage that fails; samples off
    tolerance are not an exception: the result's image is None and its report says which."""
    problems = unsupported(proj, profile=profile)
    if problems:
        raise UsageError(f"{proj.path}: cannot bake this project yet:\n  " + "\n  ".join(problems))
    board = boards.get(proj.target.board)
    runtime = project_runtime(proj)
    arch = proj.target.arch
    local_config = read_config_txt(proj.target.base_image) if proj.target.base_image is not None else None
    if arch is None and proj.target.base_image is not None:
        arch = image_arch(local_config)  # a local image: the kernel its config.txt starts
    profile, cpu = boards.emulation(board, profile=profile, cpu=cpu, arch=arch or "armhf")
    prof = profiles.load(profile)
    # Checked above, converted here: the first work, and a project that cannot be emulated converts nothing.
    timings: dict[str, float] = {}
    conversion: convert.Conversion | None = None
    if proj.model.format == "keras":
        with _stage(timings, "convert", say):
            proj, conversion = prepare_model(proj)
        assert conversion is not None
        how = (
            "unchanged, converted before" if conversion.cached else f"converted with TensorFlow {conversion.tensorflow}"
        )
        say(f"convert: {conversion.keras.name} ({how}) is {conversion.tflite}")
    output = output or proj.build_dir / f"{proj.model.file.stem}.img"
    out_dir = output.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    work = output.with_name(output.name + ".part")
    inventory = out_dir / "inventory.yml"
    extra = out_dir / "provision-vars.json"
    provision_play = out_dir / "provision.yml"
    names = [p.name for p in proj.model.samples]

    with _stage(timings, "image", say):
        if proj.target.base_kind == "debian":
            spec = image.default_spec(base=proj.target.base, size_mb=proj.target.image_size_mb, board=board.name)
            base = image.build_image(spec).path
            release = f"{image.BASES[proj.target.base].describe()} (pibake's base)"
        elif proj.target.base_kind == "raspios":
            base, release = _fetch_release(proj)
            local_config = read_config_txt(base)
        else:
            assert proj.target.base_image is not None
            base = proj.target.base_image
            codename, arch = image_userland(base)
            release = f"image {base.name}: Debian {codename} {arch} userland, {runtime_base(proj)}'s runtimes"
    boot_kernel: kernel.KernelBuild | None = None
    if proj.target.base_kind != "debian" and needs_pibake_kernel(local_config, prof):
        # Raspberry Pi OS: its config.txt names no kernel=, and the firmware's kernel8.img/kernel7l.img have no virtio
        # drivers. The card keeps its own kernel; the emulated boot runs pibake's (built once, then cached).
        with _stage(timings, "kernel", say):
            boot_kernel = kernel.build(prof.name)
        say(
            f"kernel: {proj.target.base if proj.target.base_kind == 'raspios' else base.name} names no kernel= in "
            "config.txt (Raspberry Pi OS's own kernel has no virtio "
            f"drivers): the emulated boot runs {boot_kernel.describe()}, the card keeps its own"
        )
    # The model role's source, and the reference's: what runs here is what the Pi gets.
    staged = cache_root() / "bake" / hashlib.sha256(str(proj.path).encode()).hexdigest()[:16] / "model"
    version = stage_model(proj, staged)
    with _stage(timings, "reference", say):
        reference = host_outputs(proj, staged)
        host = _vectors(reference, names, "host")

    output.unlink(missing_ok=True)
    try:
        with _stage(timings, "prepare", say):
            prepare.prepare(
                base,
                output=work,
                power_of_two=prof.needs_power_of_two,
                console=prof.console,
                user=proj.system.user,
                ssh_pubkey=sshkey.ensure_keypair().public_key,
                hostname=proj.system.hostname,
            )
        # Owner-only: with Wi-Fi it carries the network's key (removed again at the end, whatever happens).
        extra.unlink(missing_ok=True)
        with os.fdopen(os.open(extra, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(json.dumps(provision_vars(proj, staged, version, runtime), indent=1) + "\n")
        inventory.unlink(missing_ok=True)
        forwards = (proj.service.port,) if proj.service.enabled else ()
        with _stage(timings, "boot", say):
            guest = emulator.start(
                work, profile=profile, cpu=cpu, board=proj.target.board, name=name, persist=True,
                inventory=inventory, forward=forwards, cold=True, user=proj.system.user,
                kernel=boot_kernel.kernel if boot_kernel else None,
            )  # fmt: skip
        try:
            with _stage(timings, "provision", say):
                books = (collection / "site.yml", collection / "playbooks/bake_system.yml", *proj.provision.playbooks)
                play = provision_playbook(provision_play, books, proj.provision.roles)
                provision(collection, inventory, playbook=play, extra_vars_file=extra)
            with _stage(timings, "verify", say):
                pi_out = predict_on_guest(guest, MODEL_DIR, model_file=proj.model.file.name, python=runtime.python)
                pi = _vectors(pi_out, names, "Pi")
                answers: list[report.ServiceAnswer | None] = [None] * len(names)
                if proj.service.enabled:
                    served = predict_with_service(guest, list(proj.model.samples), port=proj.service.port)
                    answers = [report.ServiceAnswer(str(a["label"]), float(str(a["probability"]))) for a in served]
        finally:
            with _stage(timings, "shutdown", say):
                stopped = emulator.stop(name)
        if not stopped.clean:
            raise PibakeError(f"{name} did not shut down cleanly; the image may not be consistent and was not kept")
        samples = report.sample_results(names, host, pi, proj.model.tolerance, answers)
        passed = all(s.passed for s in samples)
        sha = None
        if passed:
            work.replace(output)
            with _stage(timings, "finalize", say):
                try:
                    sha = finalize.finalize(output, board=board.name).sha256  # a local image records none
                except BaseException:
                    output.unlink(missing_ok=True)
                    raise
    finally:
        work.unlink(missing_ok=True)
        inventory.unlink(missing_ok=True)
        extra.unlink(missing_ok=True)
        provision_play.unlink(missing_ok=True)

    wheels: tuple[report.Wheel, ...] = ()
    files = [cache_root() / "wheels" / f for f in runtime.wheel_filenames]
    if all(f.is_file() for f in files) and prof.arch == "armhf":
        checked = preflight.preflight(files, board=proj.target.board, profile=profile, cpu=cpu)
        wheels = report.wheels_from_preflight(checked, {f.name: sha256_file(f) for f in files})
    elif all(f.is_file() for f in files):
        # AArch64 ELF files carry no FP/SIMD attributes to check statically: the proof is the model's run on the
        # board's own core above (a SIGILL there fails the bake).
        ran = samples and all(s.passed for s in samples)
        proof = report.PreflightResult(
            f"emulated CPU {prof.resolve_cpu(cpu)} (profile {profile})",
            bool(ran),
            "imported and ran the model on every sample" if ran else "the model did not pass on every sample",
        )
        wheels = tuple(report.Wheel(f.name, sha256_file(f), (proof,)) for f in files)
    result = report.BakeReport(
        project=str(proj.path),
        board=board.name,
        board_description=f"{board.model}, {board.soc}, {board.core}",
        profile=profile,
        emulated_cpu=prof.resolve_cpu(cpu),
        emulated_kernel=boot_kernel.describe() if boot_kernel else None,
        base=proj.target.base,
        release=release,
        runtime=runtime.name,
        runtime_version=runtime.version,
        model=proj.model.file.name,
        model_origin=conversion.describe() if conversion else None,
        wheels=wheels,
        labels=proj.model.labels,
        tolerance=proj.model.tolerance,
        samples=samples,
        timings=timings,
        image=output if sha else None,
        image_sha256=sha,
        skipped=proj.skipped,
    )
    md, html_file = report.write(result, out_dir)
    return BakeResult(result, output if sha else None, md, html_file)


def provision_playbook(play: Path, playbooks: Sequence[Path], roles: Sequence[Path] = ()) -> Path:
    """PLAY, written as one playbook that imports PLAYBOOKS in order, then applies ROLES (directories) to the Pi.

    One ansible-playbook run makes one connection: each run starts Mitogen's Python on the Pi again, for the
    login user and again for become, and that is most of a minute on an emulated core (measured 2026-11-30 on
    virt64 cortex-a72: 58 s for bake_system.yml's first task, 33 s for `ansible -m ping`). An imported
    playbook keeps its own directory as playbook_dir and for its relative paths, as when it runs alone.
    """
    lines = [
        "---",
        "# Written by pibake bake: pibake's roles, the system settings, then the project's own, in one run.",
    ]
    lines += [f"- ansible.builtin.import_playbook: {json.dumps(str(book))}" for book in playbooks]
    if roles:
        lines += ["- name: Apply the project's roles", "  hosts: raspberry_pi", "  become: true", "  roles:"]
        lines += [f"    - role: {json.dumps(str(r))}" for r in roles]
    play.write_text("\n".join(lines) + "\n")
    return play
