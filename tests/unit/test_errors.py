"""The error kinds: each its own exit code, listed in --help, raised where they belong."""

from __future__ import annotations

from pathlib import Path

import pytest

from pibake.errors import (
    KINDS,
    CommandFailed,
    Interrupted,
    PibakeError,
    Refused,
    ToolMissing,
    UsageError,
    VerificationFailed,
)
from pibake.util.proc import run
from tests.conftest import REPO, run_cli


def test_every_kind_has_its_own_exit_code_and_none_is_argparse_s_alone() -> None:
    codes = [k.exit_code for k in KINDS]
    assert len(set(codes)) == len(codes)
    assert 0 not in codes
    assert UsageError.exit_code == 2  # argparse's usage errors and ours read the same to a script
    assert Interrupted.exit_code == 130


def test_help_lists_every_exit_code() -> None:
    res = run_cli(["--help"])
    assert res.code == 0
    assert "exit codes:" in res.out
    for kind in KINDS:
        assert f"  {kind.exit_code:<4} {kind.kind}: " in res.out


def test_a_bad_argument_is_a_usage_error(tmp_path: Path, isolated_cache: Path) -> None:
    res = run_cli(["image", "prepare", str(tmp_path / "missing.img")])
    assert res.code == UsageError.exit_code
    assert "Traceback" not in res.err


def test_an_unverifiable_download_is_refused_before_any_connection(tmp_path: Path, isolated_cache: Path) -> None:
    # Port 9 (discard) on loopback: nothing is contacted, the refusal comes first.
    res = run_cli(["image", "fetch", "--url", "http://127.0.0.1:9/x.img.xz", "-o", str(tmp_path / "x.img")])
    assert res.code == Refused.exit_code
    assert "--sha256" in res.err
    assert not (tmp_path / "x.img").exists()


def test_a_missing_program_is_tool_missing() -> None:
    with pytest.raises(ToolMissing, match="pibake-no-such-tool is not installed"):
        run(["pibake-no-such-tool", "--version"])
    with pytest.raises(ToolMissing):
        run(["pibake-no-such-tool"], stream=True)


def test_a_failed_command_keeps_its_whole_output_and_exit_status() -> None:
    script = "for i in $(seq 1 100); do echo line$i; done; echo last >&2; exit 7"
    with pytest.raises(CommandFailed) as caught:
        run(["sh", "-c", script])
    assert caught.value.returncode == 7
    assert "line1\n" in caught.value.output and "last" in caught.value.output  # not only the tail
    assert "line1\n" not in str(caught.value)  # the message quotes the tail only
    assert caught.value.exit_code == PibakeError.exit_code
    with pytest.raises(CommandFailed) as streamed:
        run(["sh", "-c", script], stream=True)
    assert streamed.value.returncode == 7 and "line1" in streamed.value.output


def test_a_kind_is_told_apart_by_its_class_not_its_text() -> None:
    for kind in (UsageError, Refused, VerificationFailed, ToolMissing, Interrupted):
        assert issubclass(kind, PibakeError)
        assert kind("same words").exit_code != PibakeError("same words").exit_code


def test_image_check_of_a_file_that_is_no_disk_image_is_a_failed_check(tmp_path: Path) -> None:
    # README, "Exit codes": `image check` answers 4 when the image is not as it must be; a file with no partition
    # table, or none with a boot partition, boots nothing. A path to nothing is the usage error.
    junk = tmp_path / "car.img.xz"
    junk.write_bytes(b"\xfd7zXZ\0" + b"\0" * 1024)
    res = run_cli(["image", "check", str(junk), "--board", "pi2"])
    assert res.code == VerificationFailed.exit_code, res.err
    assert f"pibake: error: {junk}: not an MBR disk image" in res.err
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"\0" * 510 + b"\x55\xaa")
    res = run_cli(["image", "check", str(empty), "--board", "pi2"])
    assert res.code == VerificationFailed.exit_code, res.err
    assert "no partition 1" in res.err
    res = run_cli(["image", "check", str(tmp_path / "missing.img"), "--board", "pi2"])
    assert res.code == UsageError.exit_code
    row = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("| 4 |"))
    assert "`image check`, also of a file that is no disk image" in row
