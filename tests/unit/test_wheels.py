"""Runtime locks: parsing, the committed locks, and `pibake wheels fetch` against a local stand-in index."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
import yaml

from pibake import wheels
from pibake._module_utils import wheel_lock
from pibake.errors import UsageError, VerificationFailed
from tests.conftest import REPO, run_cli

LOCKS = REPO / "roles" / "python_runtime" / "files" / "locks"
HEADER = "# pibake-lock: python-version=3.11 implementation=cp abi=cp311 platform=manylinux_2_36_armv7l\n"


def _wheel(directory: Path, name: str = "demo_pkg", version: str = "1.0", payload: str = "x = 1\n") -> Path:
    """A minimal pure-Python wheel, as a local index would serve it."""
    path = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}.py", payload)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def _lock(path: Path, wheel: Path, *, digest: str | None = None) -> Path:
    digest = digest or hashlib.sha256(wheel.read_bytes()).hexdigest()
    name, version = wheel.name.split("-")[:2]
    path.write_text(f"{HEADER}{name}=={version} \\\n    --hash=sha256:{digest}\n    # file: {wheel.name}\n")
    return path


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory of wheels that pip downloads from instead of any index (no network, no pip.conf)."""
    links = tmp_path / "index"
    links.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    return links


def test_parse_reads_the_header_the_pins_and_their_files() -> None:
    lock = wheel_lock.parse(
        HEADER
        + "# pibake-lock: system=numpy==1.24.2\n# a comment\n"
        + "Typing_Extensions==4.16.0 \\\n    --hash=sha256:" + "a" * 64 + " \\\n    --hash=sha256:" + "b" * 64 + "\n"
        + "    # file: typing_extensions-4.16.0-py3-none-any.whl\n"
        + "tqdm==4.70.1 --hash=sha256:" + "c" * 64 + "\n"
    )  # fmt: skip
    assert (lock.python_version, lock.abi, lock.platforms, lock.system) == (
        "3.11",
        "cp311",
        ("manylinux_2_36_armv7l",),
        ("numpy==1.24.2",),
    )
    first, second = lock.pins
    assert (first.key, first.version, first.hashes) == ("typing-extensions", "4.16.0", ("a" * 64, "b" * 64))
    assert first.filename == "typing_extensions-4.16.0-py3-none-any.whl"
    assert (second.name, second.filename) == ("tqdm", None)
    assert lock.pip_target_args()[:3] == ["--only-binary=:all:", "--python-version", "3.11"]
    assert lock.pip_target_args()[-2:] == ["--platform", "manylinux_2_36_armv7l"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("tqdm==4.70.1\n", "no --hash"),
        ("tqdm>=4 --hash=sha256:" + "c" * 64 + "\n", "not a name==version pin"),
        ("-i http://example.invalid/simple\n", "not a name==version pin"),
        ("tqdm==4.70.1 --hash=md5:abc\n", "not a --hash=sha256"),
        ("tqdm==4.70.1 --hash=sha256:" + "c" * 64 + " ; python_version > '3'\n", "not a --hash=sha256"),
        ("# file: tqdm-4.70.1-py3-none-any.whl\n", "must follow the pin"),
    ],
)
def test_parse_refuses_what_is_not_a_lock(text: str, says: str) -> None:
    with pytest.raises(wheel_lock.LockError, match=says):
        wheel_lock.parse(HEADER + text)


def test_parse_refuses_a_lock_without_its_header() -> None:
    with pytest.raises(wheel_lock.LockError, match="header lacks python-version, implementation, abi, platform"):
        wheel_lock.parse("tqdm==4.70.1 --hash=sha256:" + "c" * 64 + "\n")


@pytest.mark.parametrize("path", sorted(LOCKS.glob("*.txt")), ids=lambda p: p.name)
def test_each_committed_lock_names_one_wheel_per_pin_and_leaves_numpy_to_the_distribution(path: Path) -> None:
    lock = wheel_lock.read(path)
    assert lock.pins and all(pin.filename and len(pin.hashes) == 1 for pin in lock.pins)
    assert "numpy" not in {pin.key for pin in lock.pins}
    assert any(s.startswith("numpy==") for s in lock.system)
    runtime, python = path.name.split("-3.")[0], "3." + path.name.split("-3.")[1].split("-")[0]
    assert lock.python_version == python and lock.abi == "cp" + python.replace(".", "")
    assert runtime in {pin.key for pin in lock.pins}
    assert "Made by `make locks`" in path.read_text()


def test_the_bullseye_lock_pins_the_wheel_the_role_pins_today() -> None:
    defaults = yaml.safe_load((REPO / "roles" / "python_runtime" / "defaults" / "main.yml").read_text())
    (pin,) = wheel_lock.read(LOCKS / "tflite-runtime-3.9-debian-bullseye-armhf.txt").pins
    assert pin.version == defaults["python_runtime_version"]
    assert pin.hashes == (defaults["python_runtime_wheel_sha256"],)
    assert pin.filename == "tflite_runtime-2.11.0-cp39-cp39-manylinux2014_armv7l.whl"


def test_fetch_downloads_checks_and_then_serves_from_the_cache(tmp_path: Path, index: Path) -> None:
    lock = _lock(tmp_path / "demo.txt", _wheel(index))
    cache = tmp_path / "cache"
    first = wheels.fetch(lock, cache=cache)
    assert first.downloaded == ("demo_pkg-1.0-py3-none-any.whl",)
    (index / "demo_pkg-1.0-py3-none-any.whl").unlink()  # a second run must not need the index
    second = wheels.fetch(lock, cache=cache)
    assert second.downloaded == ()
    assert [path.name for _, path, _ in second.wheels] == ["demo_pkg-1.0-py3-none-any.whl"]
    assert second.total_bytes == (cache / "demo_pkg-1.0-py3-none-any.whl").stat().st_size


def test_a_wheel_whose_digest_differs_from_the_lock_is_refused_and_not_kept(tmp_path: Path, index: Path) -> None:
    wheel = _wheel(index)
    actual = hashlib.sha256(wheel.read_bytes()).hexdigest()
    lock = _lock(tmp_path / "demo.txt", wheel, digest="0" * 64)
    cache = tmp_path / "cache"
    result = run_cli(["wheels", "fetch", "--lock", str(lock), "--cache", str(cache)])
    assert result.code == VerificationFailed.exit_code
    assert wheel.name in result.err and "0" * 64 in result.err and actual in result.err
    assert sorted(p.name for p in cache.iterdir()) == [".lock"]  # no wheel, no staging directory


def test_a_cached_wheel_that_was_changed_is_downloaded_afresh(tmp_path: Path, index: Path) -> None:
    lock = _lock(tmp_path / "demo.txt", _wheel(index))
    cache = tmp_path / "cache"
    wheels.fetch(lock, cache=cache)
    (cache / "demo_pkg-1.0-py3-none-any.whl").write_bytes(b"not the wheel")
    assert wheels.fetch(lock, cache=cache).downloaded == ("demo_pkg-1.0-py3-none-any.whl",)


def test_fetch_refuses_a_file_that_is_not_a_lock(tmp_path: Path) -> None:
    bad = tmp_path / "requirements.txt"
    bad.write_text("tqdm\n")
    with pytest.raises(UsageError, match="not a name==version pin"):
        wheels.fetch(bad, cache=tmp_path / "cache")
    assert run_cli(["wheels", "fetch", "--lock", str(tmp_path / "nope.txt")]).code == UsageError.exit_code


def test_wheels_fetch_help_says_what_it_checks() -> None:
    result = run_cli(["wheels", "fetch", "--help"])
    assert result.code == 0
    assert "SHA-256" in result.out and "PIP_INDEX_URL" in result.out and "cached" in result.out
