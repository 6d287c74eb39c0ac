"""`pibake image check` on the Debian-built image, whole and broken on purpose (mtools, no mounts)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pibake.boards import firmware as piboot
from pibake.disk.layout import read_mbr
from pibake.errors import PibakeError, VerificationFailed
from pibake.image.finalize import finalize
from tests.conftest import run_cli

pytestmark = pytest.mark.root

BOARD_DTB = piboot.boot_of("pi3b-plus").upstream_dtb


def _copy(image: Path, tmp_path: Path) -> tuple[Path, str]:
    """A sparse copy of IMAGE and the mtools address of its FAT partition."""
    copy = tmp_path / "broken.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(copy)], check=True)
    return copy, f"{copy}@@{read_mbr(copy).partition(1).start * 512}"


def _mtools(*argv: str) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True).stdout


def test_the_finished_image_passes(base_image: Path) -> None:
    res = run_cli(["image", "check", str(base_image)])
    assert res.code == 0, res.err
    assert "ready for pi3b-plus" in res.out  # the board recorded in config.txt
    assert f"device tree {BOARD_DTB}" in res.out
    res = run_cli(["image", "check", str(base_image), "--board", "pi2"])
    assert res.code == 0, res.err  # every Pi DTB is on the card: it boots a Pi 2 as well


def test_the_finished_image_holds_the_firmware_of_every_debian_board(base_image: Path) -> None:
    for board in ("pi2", "pi3", "pi4"):
        assert run_cli(["image", "check", str(base_image), "--board", board]).code == 0


def test_missing_start_elf_fails(base_image: Path, tmp_path: Path) -> None:
    img, fat = _copy(base_image, tmp_path)
    _mtools("mdel", "-i", fat, "::/start.elf")
    res = run_cli(["image", "check", str(img)])
    assert res.code == VerificationFailed.exit_code
    assert "start.elf is missing" in res.err
    assert "Build it for the pi3b-plus (`pibake image build --board pi3b-plus`)" in res.err


def test_cmdline_with_a_wrong_partuuid_fails(base_image: Path, tmp_path: Path) -> None:
    img, fat = _copy(base_image, tmp_path)
    cmdline = _mtools("mtype", "-i", fat, "::/cmdline.txt")
    wrong = tmp_path / "cmdline.txt"
    good = f"{read_mbr(img).disk_id:08x}-02"
    wrong.write_text(cmdline.replace(good, "deadbeef-02"))
    _mtools("mcopy", "-o", "-i", fat, str(wrong), "::/cmdline.txt")
    res = run_cli(["image", "check", str(img)])
    assert res.code == VerificationFailed.exit_code
    assert "root=PARTUUID=deadbeef-02" in res.err
    assert f"PARTUUID={good}" in res.err


def test_missing_dtb_fails_and_every_problem_is_listed(base_image: Path, tmp_path: Path) -> None:
    img, fat = _copy(base_image, tmp_path)
    _mtools("mdel", "-i", fat, f"::/{BOARD_DTB}")
    res = run_cli(["image", "check", str(img)])
    assert res.code == VerificationFailed.exit_code
    assert f"{BOARD_DTB} is missing" in res.err
    # Another board's device tree is still there.
    assert run_cli(["image", "check", str(img), "--board", "pi2"]).code == 0
    _mtools("mdel", "-i", fat, "::/bootcode.bin")
    res = run_cli(["image", "check", str(img)])
    assert "bootcode.bin is missing" in res.err
    assert f"{BOARD_DTB} is missing" in res.err


def test_finalize_refuses_an_image_that_would_not_boot(base_image: Path, tmp_path: Path) -> None:
    img, fat = _copy(base_image, tmp_path)
    _mtools("mdel", "-i", fat, "::/start.elf")
    with pytest.raises(PibakeError, match=r"start\.elf is missing"):
        finalize(img, write_bmap=False)
