from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pibake.disk.layout import MIB, SECTOR, Layout, parse_mbr, partuuid, read_mbr
from pibake.errors import PibakeError


def test_default_layout_matches_raspberry_pi_os() -> None:
    lay = Layout(total_mb=2048)
    assert lay.boot.start == 8192  # 4 MiB, where Raspberry Pi OS starts its boot partition
    assert lay.boot.nbytes == 256 * MIB
    assert lay.boot.type_code == 0x0C  # FAT32 LBA
    assert lay.root.start == lay.boot.start + lay.boot.size
    assert lay.root.offset + lay.root.nbytes == 2048 * MIB
    assert (lay.boot.label, lay.root.label) == ("bootfs", "rootfs")


def test_sfdisk_script_names_disk_id_and_both_partitions() -> None:
    script = Layout(total_mb=2048).sfdisk_script(0x1234ABCD)
    assert "label: dos" in script
    assert "label-id: 0x1234abcd" in script
    assert "start=8192, size=524288, type=c" in script
    assert "start=532480, size=3661824, type=83" in script


@pytest.mark.parametrize(("total", "boot"), [(1024, 256), (2048, 32)])
def test_too_small_layouts_are_refused(total: int, boot: int) -> None:
    with pytest.raises(PibakeError, match="MiB"):
        Layout(total_mb=total, boot_mb=boot)


def test_partuuid_is_disk_signature_and_two_digit_number() -> None:
    assert partuuid(0x00C0FFEE, 2) == "00c0ffee-02"


def _mbr(disk_id: int, parts: list[tuple[int, int, int]]) -> bytes:
    sector = bytearray(SECTOR)
    struct.pack_into("<I", sector, 440, disk_id)
    for i, (type_code, start, size) in enumerate(parts):
        base = 446 + 16 * i
        sector[base + 4] = type_code
        struct.pack_into("<II", sector, base + 8, start, size)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def test_parse_mbr_reads_signature_and_partitions() -> None:
    mbr = parse_mbr(_mbr(0xDEADBEEF, [(0x0C, 8192, 1000), (0x83, 9192, 5000)]))
    assert mbr.disk_id == 0xDEADBEEF
    assert mbr.partition(2).start == 9192
    assert mbr.partition(1).type_code == 0x0C
    with pytest.raises(PibakeError, match="no partition 3"):
        mbr.partition(3)


def test_read_mbr_refuses_a_file_that_is_not_a_disk_image(tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"hello" * 200)
    with pytest.raises(PibakeError, match="not an MBR") as err:
        read_mbr(junk)
    assert str(err.value).startswith(f"{junk}: ")  # which file, for a command given several
