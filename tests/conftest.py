from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pibake.cli import main
from pibake.disk.layout import Layout
from pibake.image import build

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_tensorflow(script: str, *args: str) -> None:
    """SCRIPT (Python source that imports TensorFlow) with ARGS in a child Python: TensorFlow never enters the test
    process (which keeps the host's tflite-runtime alone). The test fails with both streams when it exits non-zero."""
    res = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert res.returncode == 0, res.stdout + res.stderr


def run_local_play(book: Path, cfg_dir: Path) -> subprocess.CompletedProcess[str]:
    """ansible-playbook BOOK on localhost with this Python, under a bare ansible.cfg written to CFG_DIR (none of the
    collection's: Mitogen, its inventory); its result, not checked."""
    (cfg_dir / "ansible.cfg").write_text("[defaults]\n")
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(book)],
        env={
            **os.environ,
            "ANSIBLE_CONFIG": str(cfg_dir / "ansible.cfg"),
            "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def molecule_config(scenario: Path) -> dict[str, Any]:
    """SCENARIO's molecule.yml as Molecule reads it: merged over the shared .config/molecule/config.yml, by Molecule's
    own merge (mappings key by key, lists whole)."""
    from molecule.util import merge_dicts

    base = yaml.safe_load((REPO / ".config" / "molecule" / "config.yml").read_text())
    return merge_dicts(base, yaml.safe_load(scenario.read_text()))


def local_image(
    path: Path, codename: str | None, arch: str | None, config_txt: str = "", packages: tuple[str, ...] = ()
) -> Path:
    """An image at PATH (sparse, 1092 MiB) whose root has the userland os-release and dpkg's status say: Debian
    CODENAME on ARCH (None: the file is left out) with PACKAGES installed too, and CONFIG_TXT on its boot partition."""
    root, boot, work = (path.with_name(f"{path.stem}-{d}") for d in ("root", "boot", "work"))
    for d in (root / "etc", root / "var/lib/dpkg", boot, work):
        d.mkdir(parents=True)
    if codename is not None:
        (root / "etc/os-release").write_text(
            f'PRETTY_NAME="Debian GNU/Linux ({codename})"\nVERSION_CODENAME={codename}\n'
        )
    if arch is not None:
        (root / "var/lib/dpkg/status").write_text(
            f"Package: dpkg\nStatus: install ok installed\nArchitecture: {arch}\nVersion: 1.22.21\n\n"
            "Package: tzdata\nStatus: install ok installed\nArchitecture: all\nVersion: 2025b\n"
            + "".join(
                f"\nPackage: {p}\nStatus: install ok installed\nArchitecture: {arch}\nVersion: 1\n" for p in packages
            )
        )
    (boot / "config.txt").write_text(config_txt)
    build.assemble(path, Layout(total_mb=1092, boot_mb=64), 0x1234ABCD, root, boot, work)
    return path


def run_cli(args: list[str]) -> CliResult:
    """Call the CLI in-process, as a user would, capturing stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as e:  # argparse's --help and usage errors
            code = int(e.code or 0)
    return CliResult(code, out.getvalue(), err.getvalue())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark arm64_base every test that needs the trixie arm64 base (the arm64_image fixture): `make test` runs the
    others beside that image's first build and these after it."""
    for item in items:
        if "arm64_image" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.arm64_base)


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private PIBAKE_CACHE that shares the real cache's SSH key, so images built there still trust it."""
    cache = tmp_path / "cache"
    cache.mkdir()
    real = Path(os.environ.get("PIBAKE_CACHE") or Path.home() / ".cache" / "pibake")
    if (real / "ssh").is_dir():
        (cache / "ssh").symlink_to(real / "ssh")
    monkeypatch.setenv("PIBAKE_CACHE", str(cache))
    yield cache


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under `make test` (PIBAKE_NO_SKIP=1) a skipped test is a failure: make test installs every tool,
    so a skip there means something is missing that CI would otherwise not notice."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("PIBAKE_NO_SKIP") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, and `make test` allows no skips: {report.longrepr}"


# Seconds per test file (setup, call and teardown), for the table `make test` prints at the end.
_FILE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::", 1)[0]
    _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under scripts/test_times.py (PIBAKE_TEST_TIMES set), add each file's seconds to its record, under the step
    that ran pytest (PIBAKE_TEST_STEP)."""
    record = os.environ.get("PIBAKE_TEST_TIMES")
    step = os.environ.get("PIBAKE_TEST_STEP", "pytest")
    if record and _FILE_SECONDS:
        with Path(record).open("a") as f:
            f.writelines(f"{step}/{path}\t{seconds:.1f}\n" for path, seconds in _FILE_SECONDS.items())
