"""`make locks`: resolve each runtime's dependency closure for its Pi platform and write its lock by hash.

For each (runtime, Python, platform) in LOCKS, pip's resolver (``pip install --dry-run --report``
with ``--platform``, ``--python-version``, ``--implementation cp``, ``--abi`` and
``--only-binary=:all:``) picks every package of the closure and the one wheel the target installs,
from the index's metadata: nothing is installed and, where the index serves metadata (PEP 658),
no wheel is downloaded. It runs in an empty venv whose site-packages holds only stand-ins (a
dist-info with name and version) for the distribution's own packages, numpy: what
--system-site-packages shows the venv on the Pi. pip leaves an installed package out of its
plan when its version meets every requirement, so the lock has no numpy, and a runtime that needs
another numpy than the distribution's is refused here instead of on the Pi.

Why pip and not uv: uv has no armv7l target (its --python-platform has no 32-bit ARM), uv ignores
the upper bounds of Requires-Python (it pinned backports-strenum 1.3.1, Requires-Python <3.11, for
Python 3.13), and its --generate-hashes writes every platform's hashes (uv issue 3516).

Usage: python scripts/lock_runtimes.py [--only NAME ...] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
import tempfile
import venv
from dataclasses import dataclass
from pathlib import Path

from pibake._module_utils import wheel_lock

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "roles" / "python_runtime" / "files" / "locks"

log = logging.getLogger("lock_runtimes")


@dataclass(frozen=True)
class Platform:
    """A Pi base: its Python (X.Y), userland machine, glibc (2.Y), and the distribution's packages and versions."""

    name: str
    python: str
    machine: str
    glibc: str
    system: dict[str, str]

    @property
    def abi(self) -> str:
        """CPython's ABI tag for the Python: cp313."""
        return "cp" + self.python.replace(".", "")

    @property
    def platform_tags(self) -> list[str]:
        """Every manylinux tag the target's glibc accepts, newest first, as pip on the Pi computes them.

        pip's --platform takes tags literally (manylinux_2_41 does not imply manylinux_2_27), so each is listed.
        """
        newest = int(self.glibc.split(".")[1])
        tags = [f"manylinux_2_{minor}_{self.machine}" for minor in range(newest, 16, -1)]
        return [*tags, f"manylinux2014_{self.machine}"]


PLATFORMS = {
    p.name: p
    for p in (
        # trixie: python3 3.13, libc6 2.41, python3-numpy 1:2.2.4+ds-1.
        Platform("debian-trixie-arm64", "3.13", "aarch64", "2.41", {"numpy": "2.2.4"}),
        # bookworm: python3 3.11.2, libc6 2.36, python3-numpy 1:1.24.2-1+deb12u1.
        Platform("debian-bookworm-armhf", "3.11", "armv7l", "2.36", {"numpy": "1.24.2"}),
        # bullseye: python3 3.9.2, libc6 2.31, python3-numpy 1:1.19.5-1.
        Platform("debian-bullseye-armhf", "3.9", "armv7l", "2.31", {"numpy": "1.19.5"}),
    )
}

# (runtime requirement, platform). The newest release with a wheel for the platform's Python and machine:
# ai-edge-litert and onnxruntime have no armv7l wheels, tflite-runtime none for Python 3.13 (nor for 3.11 on
# armv7l before 2.14.0), and 2.11.0 is the newest for bullseye's Python 3.9 and numpy 1.19.
LOCKS = (
    ("ai-edge-litert==2.3.0", "debian-trixie-arm64"),
    ("onnxruntime==1.28.0", "debian-trixie-arm64"),
    ("tflite-runtime==2.14.0", "debian-bookworm-armhf"),
    ("tflite-runtime==2.11.0", "debian-bullseye-armhf"),
)


def lock_name(runtime: str, platform: Platform) -> str:
    """The lock's file name: <runtime>-<python>-<platform>.txt (the role's python_runtime_lock)."""
    return f"{runtime.split('==')[0]}-{platform.python}-{platform.name}.txt"


def _system_venv(root: Path, platform: Platform) -> Path:
    """An empty venv whose site-packages has a stand-in dist-info for each of the distribution's packages."""
    venv.EnvBuilder(with_pip=False).create(root)
    site = next(root.glob("lib/python3*/site-packages"))
    for name, version in platform.system.items():
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("the distribution (a stand-in for `make locks`)\n")
        (info / "RECORD").write_text("")
    return root / "bin" / "python"


def resolve_argv(runtime: str, platform: Platform, *, report: str) -> list[str]:
    """pip's resolver for RUNTIME on PLATFORM: install nothing, write the plan to REPORT (JSON)."""
    argv = ["install", "--dry-run", "--quiet", "--report", report, "--only-binary=:all:"]
    argv += ["--python-version", platform.python, "--implementation", "cp", "--abi", platform.abi]
    for tag in platform.platform_tags:
        argv += ["--platform", tag]
    return [*argv, runtime]


def make_lock(runtime: str, platform: Platform, *, out_dir: Path) -> Path:
    """Resolve RUNTIME for PLATFORM with pip, write OUT_DIR/<lock_name> with one wheel and its SHA-256 per package.

    Raises SystemExit when the closure needs a system package at another version than the distribution's,
    or when pip's plan lacks a wheel's SHA-256.
    """
    with tempfile.TemporaryDirectory(prefix="pibake-lock-") as tmp:
        python = _system_venv(Path(tmp) / "venv", platform)
        report = Path(tmp) / "report.json"
        argv = [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            *resolve_argv(runtime, platform, report=str(report)),
        ]
        log.info("resolving %s for %s", runtime, platform.name)
        subprocess.run(argv, check=True)
        plan = json.loads(report.read_text())["install"]
    system = {wheel_lock.normalize(name) for name in platform.system}
    lines = []
    for item in sorted(plan, key=lambda i: wheel_lock.normalize(i["metadata"]["name"])):
        name, version = wheel_lock.normalize(item["metadata"]["name"]), item["metadata"]["version"]
        if name in system:
            raise SystemExit(
                f"{runtime} on {platform.name} needs {name} {version}, not the distribution's "
                f"{platform.system[name]}: pick a runtime release that works with it"
            )
        info = item["download_info"]
        digest = info.get("archive_info", {}).get("hashes", {}).get("sha256")
        filename = info["url"].rsplit("/", 1)[-1].split("#", 1)[0]
        if not digest or not filename.endswith(".whl"):
            raise SystemExit(f"pip's plan for {name}=={version} has no wheel with a SHA-256: {filename}")
        lines += [f"{name}=={version} \\", f"    --hash=sha256:{digest}", f"    # file: {filename}"]
    systems = ",".join(f"{k}=={v}" for k, v in platform.system.items())
    tags = ",".join(platform.platform_tags)
    shown = ["pip", *resolve_argv(runtime, platform, report="report.json")[:-1]]
    shown = [a for a in shown if a not in platform.platform_tags and a != "--platform"]
    header = [
        f"# {runtime.split('==')[0]} for Python {platform.python} on {platform.name} ({platform.machine}, "
        f"glibc {platform.glibc}): its whole dependency closure, one wheel and one SHA-256 per package.",
        "# Made by `make locks` (scripts/lock_runtimes.py); do not edit. pip's resolver, in a venv that has only",
        f"# the distribution's {systems} (the Pi's venv sees them through --system-site-packages):",
        f"#   {shlex.join(shown)} --platform TAG... {runtime}",
        "# with --platform for each manylinux tag below. Install offline from the verified wheels with:",
        "#   pip install --no-index --find-links DIR --require-hashes --no-deps -r THIS_FILE",
        f"# pibake-lock: python-version={platform.python} implementation=cp abi={platform.abi}",
        f"# pibake-lock: platform={tags}",
        f"# pibake-lock: system={systems}",
    ]
    out = out_dir / lock_name(runtime, platform)
    out.write_text("\n".join(header + lines) + "\n")
    lock = wheel_lock.read(out)  # as the role and `pibake wheels fetch` read it
    log.info("wrote %s: %d wheels", out, len(lock.pins))
    return out


def main(argv: list[str] | None = None) -> int:
    """Write the locks named by --only (lock file names or runtime names; default all) into --out-dir."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=[], help="lock file names or runtime names (default: all)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for runtime, name in LOCKS:
        platform = PLATFORMS[name]
        if args.only and not {lock_name(runtime, platform), runtime.split("==")[0]} & set(args.only):
            continue
        make_lock(runtime, platform, out_dir=args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
