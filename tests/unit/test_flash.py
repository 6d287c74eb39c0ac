"""flash: the decisions (mounts, holders, sizes, thresholds) from fixture text, and writing into files.

Nothing here needs root or a block device: the sysfs and /proc views are fixtures,
and the writes go to regular files with --to-file. tests/integration/test_flash.py
does the same against real loop devices.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pibake.errors import Interrupted, Refused, UsageError, VerificationFailed
from pibake.flash import bmap, device, safety, writer
from pibake.flash.device import Disk, Holder, Partition
from pibake.flash.safety import Mount
from pibake.util.progress import Meter, Progress
from tests.conftest import run_cli

MIB = 1 << 20
GB = 1_000_000_000

MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw,errors=remount-ro
28 27 8:1 / /boot/efi rw,relatime shared:2 - vfat /dev/sda1 rw,fmask=0077
40 27 8:17 / /media/pi/bootfs rw,nosuid,nodev,relatime shared:30 - vfat /dev/sdb1 rw,uid=1000
41 27 8:18 / /media/pi/root\040fs rw,nosuid,nodev,relatime shared:31 - ext4 /dev/sdb2 rw
42 41 8:18 /home /media/pi/root\040fs/home rw,relatime shared:32 - ext4 /dev/sdb2 rw
50 27 0:45 / /srv/data rw,relatime shared:40 - btrfs /dev/sdc1 rw,space_cache=v2
51 27 253:0 / /mnt/vault rw,relatime shared:41 - ext4 /dev/mapper/vault rw
"""

SWAPS = """Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority
/dev/sda3                               partition\t8388604\t\t0\t\t-2
/swap\\040file                           file\t\t1048572\t\t0\t\t-3
"""


def card(name: str = "sdb", *, size: int = 32 * GB, removable: bool = True, **kw: object) -> Disk:
    major = {"sda": 8, "sdb": 8, "sdc": 8}.get(name, 7)
    minor = {"sda": 0, "sdb": 16, "sdc": 32}.get(name, 0)
    parts = tuple(Partition(f"{name}{i}", f"{major}:{minor + i}", 256 * MIB) for i in (1, 2))
    fields: dict[str, object] = {"partitions": parts, "model": "SD/MMC", "serial": "0123"}
    fields.update(kw)
    return Disk(Path(f"/dev/{name}"), name, f"{major}:{minor}", size, removable, **fields)  # type: ignore[arg-type]


def decide(disk: Disk, **kw: object) -> safety.Assessment:
    options: dict[str, object] = {
        "image": Path("/home/pi/pibake-demo.img"),
        "image_size": 2 << 30,
        "image_devno": "8:2",
        "mounts": safety.parse_mountinfo(MOUNTINFO),
        "swaps": set(),
        "unmount": False,
        "allow_non_removable": False,
    }
    options.update(kw)
    return safety.assess(disk, **options)  # type: ignore[arg-type]


# --- /proc parsers ---------------------------------------------------------------------------------


def test_mountinfo_gives_device_numbers_and_unescaped_mount_points() -> None:
    mounts = safety.parse_mountinfo(MOUNTINFO)
    assert Mount("8:2", "/", "ext4", "/dev/sda2") in mounts
    assert Mount("8:18", "/media/pi/root fs", "ext4", "/dev/sdb2") in mounts
    assert Mount("0:45", "/srv/data", "btrfs", "/dev/sdc1") in mounts
    assert len(mounts) == 8


def test_swaps_are_unescaped() -> None:
    assert safety.parse_swaps(SWAPS) == ["/dev/sda3", "/swap file"]


def test_swap_devnos_of_a_swap_file_is_its_filesystem(tmp_path: Path) -> None:
    swapfile = tmp_path / "swap file"
    swapfile.touch()
    st = swapfile.stat()
    assert safety.swap_devnos([str(swapfile), "/nonexistent"]) == {f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"}


# --- the decisions ---------------------------------------------------------------------------------


def test_a_plain_card_is_fine() -> None:
    res = decide(card(), mounts=[])
    assert res.refusals == () and res.warnings == () and res.to_unmount == ()


def test_the_disk_holding_root_is_refused_even_with_unmount() -> None:
    sda = card("sda", removable=False)
    res = decide(sda, unmount=True, allow_non_removable=True)
    assert any("holds / (from /dev/sda2), /boot/efi (from /dev/sda1) of the running system" in r for r in res.refusals)
    assert res.to_unmount == ()  # never unmounted


def test_automounts_of_the_card_are_refused_without_unmount() -> None:
    res = decide(card())
    (refusal,) = res.refusals
    assert "/dev/sdb1 on /media/pi/bootfs" in refusal and "/dev/sdb2 on /media/pi/root fs" in refusal
    assert "pass --unmount" in refusal


def test_unmount_lists_the_mounts_deepest_first() -> None:
    res = decide(card(), unmount=True)
    assert res.refusals == ()
    assert [m.mount_point for m in res.to_unmount] == [
        "/media/pi/root fs/home",
        "/media/pi/bootfs",
        "/media/pi/root fs",
    ]


def test_a_mount_is_matched_by_source_when_its_device_number_is_anonymous() -> None:
    # btrfs shows 0:NN in mountinfo: the source path still gives it away.
    res = decide(card("sdc", partitions=(Partition("sdc1", "8:33", 32 * GB),)))
    assert any("/dev/sdc1 on /srv/data" in r for r in res.refusals)


def test_swap_on_the_card_is_refused() -> None:
    res = decide(card(), mounts=[], swaps={"8:18"})
    assert res.refusals == ("/dev/sdb is in use as swap (sdb2): `swapoff` it first if it really is the card",)


def test_device_mapper_holders_are_refused_and_their_mounts_found() -> None:
    disk = card(holders=(Holder("dm-0", "253:0", "vault", "sdb2"),))
    res = decide(disk, mounts=[m for m in safety.parse_mountinfo(MOUNTINFO) if m.mount_point == "/mnt/vault"])
    text = "\n".join(res.refusals)
    assert "in use by dm-0 (vault) on sdb2" in text and "cryptsetup close" in text
    assert "/dev/mapper/vault on /mnt/vault" in text


def test_non_removable_needs_the_flag() -> None:
    res = decide(card(removable=False), mounts=[])
    (refusal,) = res.refusals
    assert "is not a removable device" in refusal and "--allow-non-removable" in refusal
    assert decide(card(removable=False), mounts=[], allow_non_removable=True).refusals == ()


def test_an_image_larger_than_the_device_is_refused() -> None:
    res = decide(card(size=2 * GB), mounts=[], image_size=2 * GB + 512)
    assert res.refusals == ("the image (2.0 GB (1.9 GiB)) does not fit on /dev/sdb (2.0 GB (1.9 GiB))",)
    assert decide(card(size=2 * GB), mounts=[], image_size=2 * GB).refusals == ()


def test_an_empty_reader_is_refused() -> None:
    res = decide(card(size=0), mounts=[])
    assert res.refusals == ("/dev/sdb has a size of 0: is there a card in the reader?",)


@pytest.mark.parametrize(
    ("size", "threshold", "warned"),
    [
        (64 * GB, 64e9, False),  # at the threshold: no warning
        (64 * GB + 512, 64e9, True),
        (128 * GB, 64e9, True),
        (128 * GB, 256e9, False),
        (16 * GB, 8e9, True),
    ],
)
def test_large_device_threshold(size: int, threshold: float, warned: bool) -> None:
    res = decide(card(size=size), mounts=[], large_device_threshold=threshold)
    assert res.refusals == ()
    assert bool(res.warnings) is warned
    if warned:
        assert f"larger than {threshold / 1e9:.0f} GB" in res.warnings[0]


def test_the_image_stored_on_the_card_is_refused() -> None:
    res = decide(card(), mounts=[], image_devno="8:17")
    assert res.refusals == (
        "the image /home/pi/pibake-demo.img is stored on /dev/sdb itself: copy it to another disk first",
    )


def test_the_loop_device_of_the_image_itself_is_refused(tmp_path: Path) -> None:
    img = tmp_path / "x.img"
    img.touch()
    loop = card("loop3", backing_file=img, partitions=())
    res = decide(loop, mounts=[], image=img)
    assert res.refusals == (f"/dev/loop3 is the loop device of the image {img} itself",)


def test_the_description_shows_what_is_about_to_be_lost() -> None:
    text = safety.describe(
        card(), image=Path("x.img"), to_unmount=[Mount("8:17", "/media/b", "vfat", "/dev/sdb1")], plan="2 GiB"
    )
    for part in ("/dev/sdb will be overwritten with x.img", "SD/MMC", "0123", "32.0 GB (29.8 GiB), removable"):
        assert part in text
    assert "sdb1 256.0 MiB" in text and "sdb2 256.0 MiB" in text
    assert "/media/b (will be unmounted)" in text


# --- sysfs -----------------------------------------------------------------------------------------


def _sysfs(root: Path) -> Path:
    """A small /sys: card sdb (removable, two partitions, dm-0 on sdb2) and disk sda."""

    def write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")

    devices = root / "devices" / "usb1" / "block"
    for disk, devno, removable, parts in (("sdb", (8, 16), "1", 2), ("sda", (8, 0), "0", 0)):
        node = devices / disk
        write(node / "dev", f"{devno[0]}:{devno[1]}")
        write(node / "size", str(62333952))
        write(node / "removable", removable)
        write(node / "device" / "vendor", "Generic-")
        write(node / "device" / "model", "SD/MMC")
        write(node / "device" / "serial", "20120501030900000")
        (root / "class" / "block").mkdir(parents=True, exist_ok=True)
        (root / "dev" / "block").mkdir(parents=True, exist_ok=True)
        (root / "class" / "block" / disk).symlink_to(node)
        (root / "dev" / "block" / f"{devno[0]}:{devno[1]}").symlink_to(node)
        for i in range(1, parts + 1):
            part = node / f"{disk}{i}"
            write(part / "partition", str(i))
            write(part / "dev", f"{devno[0]}:{devno[1] + i}")
            write(part / "size", str(524288))
            (root / "class" / "block" / part.name).symlink_to(part)
            (root / "dev" / "block" / f"{devno[0]}:{devno[1] + i}").symlink_to(part)
    dm = root / "devices" / "virtual" / "block" / "dm-0"
    write(dm / "dev", "253:0")
    write(dm / "dm" / "name", "vault")
    (dm / "slaves").mkdir()
    (dm / "slaves" / "sdb2").symlink_to(devices / "sdb" / "sdb2")
    (root / "class" / "block" / "dm-0").symlink_to(dm)
    return root


def test_sysfs_gives_the_whole_disk_with_partitions_and_holders(tmp_path: Path) -> None:
    disk = device.disk_from_sysfs("8:16", path=Path("/dev/sdb"), sys_root=_sysfs(tmp_path))
    assert disk.name == "sdb" and disk.removable and disk.size == 62333952 * 512
    assert (disk.model, disk.serial) == ("Generic- SD/MMC", "20120501030900000")
    assert [p.name for p in disk.partitions] == ["sdb1", "sdb2"]
    assert disk.holders == (Holder("dm-0", "253:0", "vault", "sdb2"),)
    assert disk.members() == {"sdb": "8:16", "sdb1": "8:17", "sdb2": "8:18", "dm-0": "253:0"}


def test_sysfs_refuses_a_partition_and_names_the_disk(tmp_path: Path) -> None:
    with pytest.raises(Refused, match=r"/dev/sdb1 is partition 1 of /dev/sdb, not a whole disk.*e\.g\. /dev/sdb"):
        device.disk_from_sysfs("8:17", path=Path("/dev/sdb1"), sys_root=_sysfs(tmp_path))


def test_sysfs_non_removable_disk(tmp_path: Path) -> None:
    disk = device.disk_from_sysfs("8:0", path=Path("/dev/sda"), sys_root=_sysfs(tmp_path))
    assert not disk.removable and disk.partitions == () and disk.holders == ()


# --- built-in card readers: SD cards on the MMC bus (issue 15, section 4) ---------------------------------


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _mmc_sysfs(root: Path, *, card_type: str, name: str = "mmcblk0", major: int = 179, emmc_boot: bool = False) -> Path:
    """A /sys with one card on an MMC host, laid out as the kernel lays it out.

    /sys/block/mmcblkN is .../mmc_host/mmc0/mmc0:aaaa/block/mmcblkN, its device/ is the card
    (type, name, serial, subsystem -> bus/mmc), removable is 0 whatever the card, the partitions
    mmcblkNp1 and p2 are inside it, and eMMC's boot partitions mmcblkNboot0/1 are disks of their
    own beside it.
    """
    (root / "bus" / "mmc").mkdir(parents=True, exist_ok=True)
    (root / "class" / "block").mkdir(parents=True, exist_ok=True)
    (root / "dev" / "block").mkdir(parents=True, exist_ok=True)
    host = root / "devices" / "pci0000:00" / "0000:00:1c.0" / "0000:02:00.0" / "rtsx_pci_sdmmc.0" / "mmc_host" / "mmc0"
    mmc_card = host / "mmc0:aaaa"
    _write(mmc_card / "type", card_type)
    _write(mmc_card / "name", "SD32G" if card_type == "SD" else "DA4032")
    _write(mmc_card / "serial", "0x1234abcd")
    (mmc_card / "subsystem").symlink_to(root / "bus" / "mmc")

    def disk(disk_name: str, minor: int, sectors: int) -> Path:
        node = mmc_card / "block" / disk_name
        _write(node / "dev", f"{major}:{minor}")
        _write(node / "size", str(sectors))
        _write(node / "removable", "0")  # the mmc block driver never sets it
        (node / "device").symlink_to(mmc_card)
        (root / "class" / "block" / disk_name).symlink_to(node)
        (root / "dev" / "block" / f"{major}:{minor}").symlink_to(node)
        return node

    node = disk(name, 0, 62333952)
    for i in (1, 2):
        part = node / f"{name}p{i}"
        _write(part / "partition", str(i))
        _write(part / "dev", f"{major}:{i}")
        _write(part / "size", str(524288 * i))
        (root / "class" / "block" / part.name).symlink_to(part)
        (root / "dev" / "block" / f"{major}:{i}").symlink_to(part)
    if emmc_boot:
        disk(f"{name}boot0", 8, 8192)
        disk(f"{name}boot1", 16, 8192)
    return root


def _mmc_mounts(name: str, *mounted: tuple[int, str]) -> list[Mount]:
    """The mounts of this machine: / on sda2, plus partition I of the mmc disk NAME on each mount point given."""
    mounts = [Mount("8:2", "/", "ext4", "/dev/sda2")]
    return mounts + [Mount(f"179:{i}", point, "vfat", f"/dev/{name}p{i}") for i, point in mounted]


def test_an_sd_card_in_a_built_in_reader_is_removable_media(tmp_path: Path) -> None:
    disk = device.disk_from_sysfs("179:0", path=Path("/dev/mmcblk0"), sys_root=_mmc_sysfs(tmp_path, card_type="SD"))
    assert not disk.removable  # what sysfs says of every mmcblk device
    assert (disk.mmc_type, disk.mmc_boot, disk.sd_card, disk.emmc) == ("SD", (), True, False)
    assert (disk.model, disk.serial) == ("SD card SD32G", "0x1234abcd")
    assert [p.name for p in disk.partitions] == ["mmcblk0p1", "mmcblk0p2"]
    res = decide(disk, mounts=_mmc_mounts("mmcblk0"))
    assert res.refusals == () and res.warnings == ()
    text = safety.describe(disk, image=Path("x.img"), to_unmount=[], plan="2 GiB")
    assert "removable: an SD card in a built-in reader (its type is SD)" in text
    sdcombo = dataclasses.replace(disk, mmc_type="SDcombo")  # SD memory and SDIO on one card
    assert sdcombo.sd_card and decide(sdcombo, mounts=[]).refusals == ()


def test_a_mounted_sd_card_in_a_built_in_reader_needs_unmount(tmp_path: Path) -> None:
    disk = device.disk_from_sysfs("179:0", path=Path("/dev/mmcblk0"), sys_root=_mmc_sysfs(tmp_path, card_type="SD"))
    mounts = _mmc_mounts("mmcblk0", (1, "/media/pi/bootfs"), (2, "/media/pi/rootfs"))
    (refusal,) = decide(disk, mounts=mounts).refusals
    assert "/dev/mmcblk0p1 on /media/pi/bootfs" in refusal and "/dev/mmcblk0p2 on /media/pi/rootfs" in refusal
    assert "pass --unmount" in refusal
    res = decide(disk, mounts=mounts, unmount=True)
    assert res.refusals == ()
    assert sorted(m.mount_point for m in res.to_unmount) == ["/media/pi/bootfs", "/media/pi/rootfs"]


def test_an_sd_card_the_system_runs_from_is_refused(tmp_path: Path) -> None:
    # A Pi flashing its own card: an SD card, removable media, and still never written.
    disk = device.disk_from_sysfs("179:0", path=Path("/dev/mmcblk0"), sys_root=_mmc_sysfs(tmp_path, card_type="SD"))
    mounts = [Mount("179:2", "/", "ext4", "/dev/mmcblk0p2"), Mount("179:1", "/boot/firmware", "vfat", "/dev/mmcblk0p1")]
    (refusal,) = decide(disk, mounts=mounts, unmount=True, allow_non_removable=True).refusals
    assert "holds / (from /dev/mmcblk0p2), /boot/firmware (from /dev/mmcblk0p1) of the running system" in refusal


def test_emmc_holding_root_is_refused(tmp_path: Path) -> None:
    root = _mmc_sysfs(tmp_path, card_type="MMC", emmc_boot=True)
    disk = device.with_udev(
        device.disk_from_sysfs("179:0", path=Path("/dev/mmcblk0"), sys_root=root),
        {"ID_DRIVE_FLASH_SD": "1", "ID_DRIVE_MEDIA_FLASH_SD": "1"},  # as udisks' rules say of every mmcblkN
    )
    assert (disk.mmc_type, disk.mmc_boot) == ("MMC", ("mmcblk0boot0", "mmcblk0boot1"))
    assert disk.emmc and not disk.sd_card and disk.udev_flash_sd
    assert [p.name for p in disk.partitions] == ["mmcblk0p1", "mmcblk0p2"]  # the boot partitions are not among them
    mounts = [Mount("179:2", "/", "ext4", "/dev/mmcblk0p2"), Mount("179:1", "/boot/efi", "vfat", "/dev/mmcblk0p1")]
    system, emmc = decide(disk, mounts=mounts, unmount=True).refusals
    assert "/dev/mmcblk0 holds / (from /dev/mmcblk0p2), /boot/efi (from /dev/mmcblk0p1) of the running system" in system
    assert emmc == (
        "/dev/mmcblk0 is eMMC, storage soldered to the board (it has the eMMC boot partitions mmcblk0boot0, "
        "mmcblk0boot1), not an SD card (/sys/block/mmcblk0/device/type is MMC, whatever udev's ID_DRIVE_FLASH_SD "
        "says (udisks sets it on every mmcblk device)): if it really is the card, pass --allow-non-removable"
    )
    # --allow-non-removable lifts the removable rule and no other: the system disk stays refused.
    (only,) = decide(disk, mounts=mounts, unmount=True, allow_non_removable=True).refusals
    assert only == system
    assert "NOT removable: eMMC" in safety.describe(disk, image=Path("x.img"), to_unmount=[], plan="2 GiB")


def test_emmc_that_is_not_the_system_disk_needs_the_flag(tmp_path: Path) -> None:
    root = _mmc_sysfs(tmp_path, card_type="MMC", emmc_boot=True)
    disk = device.disk_from_sysfs("179:0", path=Path("/dev/mmcblk0"), sys_root=root)
    (refusal,) = decide(disk, mounts=_mmc_mounts("mmcblk0")).refusals
    assert refusal.startswith("/dev/mmcblk0 is eMMC, storage soldered to the board") and "udev" not in refusal
    assert decide(disk, mounts=_mmc_mounts("mmcblk0"), allow_non_removable=True).refusals == ()
    # An MMC device without boot partitions (an old MMC card, or eMMC that hides them) is no SD card either.
    old_mmc = device.disk_from_sysfs(
        "179:0", path=Path("/dev/mmcblk0"), sys_root=_mmc_sysfs(tmp_path / "b", card_type="MMC")
    )
    assert not old_mmc.emmc and not old_mmc.sd_card
    (refusal,) = decide(old_mmc, mounts=[]).refusals
    assert "is an MMC device of type MMC, not an SD card" in refusal and "--allow-non-removable" in refusal


def test_a_usb_card_reader_is_decided_as_before(tmp_path: Path) -> None:
    root = _sysfs(tmp_path)
    # A SCSI disk has a device/type too (its SCSI peripheral type, 0 for a disk): it is no MMC card's type.
    (root / "bus" / "scsi").mkdir(parents=True)
    for disk_name in ("sdb", "sda"):
        _write(root / "devices" / "usb1" / "block" / disk_name / "device" / "type", "0")
        (root / "devices" / "usb1" / "block" / disk_name / "device" / "subsystem").symlink_to(root / "bus" / "scsi")
    reader = device.disk_from_sysfs("8:16", path=Path("/dev/sdb"), sys_root=root)
    assert reader.removable and reader.mmc_type == "" and not reader.sd_card
    reader = dataclasses.replace(reader, holders=())  # the tree's dm-0 on sdb2 is another test's
    assert decide(device.with_udev(reader, {"ID_DRIVE_FLASH_SD": "1"}), mounts=[]).refusals == ()
    fixed = device.disk_from_sysfs("8:0", path=Path("/dev/sda"), sys_root=root)
    (refusal,) = decide(dataclasses.replace(fixed, size=32 * GB), mounts=[]).refusals
    assert refusal == (
        "/dev/sda is not a removable device (/sys/block/sda/removable is 0), as SD card readers are: if it really "
        "is the card, pass --allow-non-removable"
    )
    # udev calling a fixed disk's reader SD flash does not make it removable.
    (refusal,) = decide(dataclasses.replace(fixed, size=32 * GB, udev_flash_sd=True), mounts=[]).refusals
    assert "is not a removable device" in refusal


def test_an_sd_card_in_a_built_in_reader_is_not_ejected(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="pibake")
    sd = card("mmcblk0", removable=False, mmc_type="SD")
    assert device.eject(sd) is False
    assert "SD card in a built-in reader, which has no eject: it is synced, remove it now" in caplog.text


# --- progress and write planning -------------------------------------------------------------------


def test_progress_rate_and_time_left() -> None:
    p = Progress("write", 100 * MIB, 400 * MIB, 10.0)
    assert p.rate == pytest.approx(100 * MIB / 10)
    assert p.eta == pytest.approx(30.0)
    assert p.describe() == "write: 100/400 MiB (25%), 10.5 MB/s, 0:30 left"
    assert Progress("write", 0, 10, 0.0).eta is None


def test_progress_of_a_resumed_download_of_unknown_length() -> None:
    p = Progress("x.img.xz", 30 * MIB, None, 10.0, start=10 * MIB)
    assert p.rate == pytest.approx(20 * MIB / 10)  # the bytes resumed from are not in the rate
    assert p.eta is None
    assert p.describe() == "x.img.xz: 30 MiB, 2.1 MB/s"
    assert Progress("x.img.xz", 30 * MIB, 40 * MIB, 10.0, start=10 * MIB).eta == pytest.approx(5.0)


def test_the_meter_reports_at_the_start_and_after_every_step() -> None:
    seen: list[Progress] = []
    meter = Meter("verify", 10, callback=seen.append, start=0)
    meter.add(4)
    meter.update(10)
    assert [(p.phase, p.done, p.total) for p in seen] == [("verify", 0, 10), ("verify", 4, 10), ("verify", 10, 10)]


def test_pieces_are_chunk_aligned_and_cut_at_the_head() -> None:
    chunk = writer.CHUNK
    extent = bmap.Extent(4096, 3 * chunk, None)
    pieces = list(writer._pieces(extent, chunk))
    assert pieces[0] == (4096, chunk - 4096)
    assert all(offset % chunk == 0 for offset, _ in pieces[1:])
    assert sum(n for _, n in pieces) == 3 * chunk
    assert list(writer._pieces(bmap.Extent(0, 100, None), 50)) == [(0, 50), (50, 50)]


# --- writing into files (--to-file): the whole path, without a block device ------------------------


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A 48 MiB sparse image: an MBR-ish first sector, data at 4 MiB and at 30 MiB + 1234."""
    rnd = random.Random(6)
    img = tmp_path / "card.img"
    with img.open("wb") as f:
        f.truncate(48 * MIB)
        f.write(rnd.randbytes(512))
        f.seek(4 * MIB)
        f.write(rnd.randbytes(5 * MIB))
        f.seek(30 * MIB + 1234)
        f.write(rnd.randbytes(MIB))
    return img


def test_a_regular_file_needs_to_file(image: Path, tmp_path: Path) -> None:
    existing = tmp_path / "existing.img"
    existing.write_bytes(b"keep me")
    res = run_cli(["flash", str(image), str(existing)])
    assert res.code == Refused.exit_code
    assert "is not a block device" in res.err and "--to-file" in res.err
    assert existing.read_bytes() == b"keep me"
    res = run_cli(["flash", str(image), str(tmp_path / "sdz")])
    assert res.code == UsageError.exit_code and "does not exist" in res.err and "lsblk" in res.err
    assert not (tmp_path / "sdz").exists()


def test_the_image_is_not_written_onto_itself(image: Path) -> None:
    before = image.read_bytes()
    res = run_cli(["flash", str(image), str(image), "--to-file"])
    assert res.code == Refused.exit_code and "is the image itself" in res.err
    assert image.read_bytes() == before


def test_missing_image_and_swapped_arguments(tmp_path: Path) -> None:
    res = run_cli(["flash", str(tmp_path / "nope.img"), str(tmp_path / "out.img"), "--to-file"])
    assert res.code == UsageError.exit_code and "does not exist: build it first" in res.err
    res = run_cli(["flash", "/dev/null", str(tmp_path / "out.img"), "--to-file"])
    assert res.code == UsageError.exit_code
    assert "is not a regular file (the image comes first, the device second)" in res.err


@pytest.mark.parametrize("with_bmap", [False, True])
def test_write_into_a_file_and_verify(image: Path, tmp_path: Path, with_bmap: bool) -> None:
    if with_bmap:
        bmap.create(image, bmap.default_path(image))
    out = tmp_path / "out.img"
    res = run_cli(["flash", str(image), str(out), "--to-file"])
    assert res.code == 0, res.err
    assert out.read_bytes() == image.read_bytes()
    assert "verified" in res.out
    assert ("bmap card.img.bmap" in res.out) is with_bmap
    written = int(res.out.split("wrote ")[1].split(" MiB")[0])
    assert written == (6 if with_bmap else 48)  # 512 bytes + 5 MiB + 1 MiB, in whole blocks


def test_the_sidecar_sha256_is_checked(image: Path, tmp_path: Path) -> None:
    (tmp_path / "card.img.sha256").write_text(f"{'0' * 64}  card.img\n")
    res = run_cli(["flash", str(image), str(tmp_path / "out.img"), "--to-file"])
    assert res.code == VerificationFailed.exit_code
    assert "does not match card.img.sha256" in res.err and "rebuild it" in res.err


def test_an_image_that_changed_after_its_bmap_is_caught_while_writing(image: Path, tmp_path: Path) -> None:
    bmap.create(image, bmap.default_path(image))
    with image.open("r+b") as f:
        f.seek(5 * MIB)
        f.write(b"changed")
    res = run_cli(["flash", str(image), str(tmp_path / "out.img"), "--to-file"])
    assert res.code == VerificationFailed.exit_code
    assert "does not match its bmap" in res.err and "INCOMPLETE" in res.err


def test_a_malformed_bmap_writes_nothing(image: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.bmap"
    bad.write_text("<bmap version='2.0'><ImageSize>1</ImageSize></bmap>")
    out = tmp_path / "out.img"
    res = run_cli(["flash", str(image), str(out), "--to-file", "--bmap", str(bad)])
    assert res.code == UsageError.exit_code and "bad.bmap is not a usable bmap" in res.err
    assert not out.exists()


def test_verification_catches_a_target_changed_after_writing(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.img"

    def corrupt(p: Progress) -> None:
        if p.phase == "verify" and p.done == 0:
            with out.open("r+b") as f:
                f.seek(4 * MIB + 77)
                f.write(b"\xff" * 3)

    with pytest.raises(VerificationFailed, match=r"verification failed: .* first at byte 4194381 \(sector 8192\)"):
        writer.flash(image, out, to_file=True, progress=corrupt)


def test_a_refused_device_is_refused_before_anything_is_written(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Device numbers no real disk has, so the mounts and swaps of this machine are none of its own.
    disk = Disk(Path("/dev/sdq"), "sdq", "259:9990", 32 * GB, False, partitions=(Partition("sdq1", "259:9991", MIB),))
    monkeypatch.setattr(device, "inspect_disk", lambda target: disk)
    monkeypatch.setattr(device, "unmount", lambda *a: pytest.fail("nothing may be unmounted"))
    with pytest.raises(Refused, match=r"refusing to write to /dev/sdq; nothing was written:\n  - .* not a removable"):
        safety.check_device(
            disk.path,
            image=image,
            image_size=image.stat().st_size,
            plan_text="the whole image",
            unmount=True,
            allow_non_removable=False,
            large_device_threshold=safety.LARGE_DEVICE_BYTES,
            assume_yes=True,
            confirm=None,
        )


def _answer(typed: str) -> Callable[[str], str]:
    return lambda prompt: typed


def test_confirmation_is_required_for_a_device_unless_yes() -> None:
    disk = card()
    with pytest.raises(UsageError, match="needs a confirmation: pass --yes"):
        safety._confirm(disk, disk.path, "text", (), None)
    with pytest.raises(Refused, match="you typed 'sdc', not 'sdb': nothing was written"):
        safety._confirm(disk, disk.path, "text", (), lambda prompt: "sdc\n")
    for typed in ("sdb", "/dev/sdb\n", " sdb "):
        safety._confirm(disk, disk.path, "text", (), _answer(typed))


def test_cli_reads_the_confirmation_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    from pibake.cli import flash as flash_cli

    monkeypatch.setattr("sys.stdin", io.StringIO("sdb\n"))
    assert flash_cli.ask("Type it: ") == "sdb\n"


def test_help_explains_every_safety_rule() -> None:
    res = run_cli(["flash", "--help"])
    assert res.code == 0
    for rule in (
        "whole block device",
        "not a partition",
        "--to-file",
        "holds /, /boot, /boot/firmware",
        "swap",
        "--unmount",
        "--allow-non-removable",
        "--large-device-gb",
        "must fit",
        "type its name",
        "--yes",
        "O_EXCL",
        ".bmap",
        "--no-verify",
        "eject",
    ):
        assert rule in res.out, rule


def test_default_image_is_the_demo_image() -> None:
    from pibake import cli

    args = cli.build_parser().parse_args(["flash", "/dev/sdx"])
    assert (args.image, args.device) == (Path("build/pibake-demo.img"), Path("/dev/sdx"))
    args = cli.build_parser().parse_args(["flash", "other.img", "/dev/sdx"])
    assert (args.image, args.device) == (Path("other.img"), Path("/dev/sdx"))


def test_without_sync_file_range_writes_fall_back_to_fdatasync(
    image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def refused(fd: int, offset: int, nbytes: int, flags: int) -> None:
        calls.append(flags)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(writer, "_sync_file_range", refused)
    out = tmp_path / "out.img"
    res = writer.flash(image, out, to_file=True)
    assert res.verified and out.read_bytes() == image.read_bytes()
    assert calls == [writer.SYNC_FILE_RANGE_WRITE]  # tried once, then fdatasync only


# --- Ctrl-C and SIGTERM while writing (issue 15, section 6) ------------------------------------------


class _SlowCard:
    """A card that writes RATE bytes a second, one request after the other, on a clock of its own.

    sync_file_range(WRITE) queues a chunk; a wait returns when the card has written it, and moves
    the clock there. Nothing else takes time: the writer is as fast as it can be.
    """

    def __init__(self, rate: float) -> None:
        self.rate, self.now, self.busy_until = rate, 0.0, 0.0
        self.done_at: dict[int, float] = {}

    def clock(self) -> float:
        return self.now

    def sync_file_range(self, fd: int, offset: int, nbytes: int, flags: int) -> None:
        if flags == writer.SYNC_FILE_RANGE_WRITE:
            self.busy_until = max(self.busy_until, self.now) + nbytes / self.rate
            self.done_at[offset] = self.busy_until
        else:
            self.now = max(self.now, self.done_at[offset])


@pytest.mark.parametrize("rate", [1e6, 2e6, 20e6, 500e6])
def test_what_is_in_flight_is_about_a_second_of_the_card(tmp_path: Path, rate: float) -> None:
    """Ctrl-C waits for what is in flight (closing a block device writes its pages out): a second of the card.

    A fixed 64 MiB window was 36 s of waiting on a card writing 2 MB/s.
    """
    card = _SlowCard(rate)
    fd = os.open(tmp_path / "card", os.O_RDWR | os.O_CREAT)
    try:
        behind = writer._WriteBehind(fd, clock=card.clock)
        behind.sync_range = card.sync_file_range
        most = 0
        for offset in range(0, 256 * MIB, writer.CHUNK):
            behind.written(offset, writer.CHUNK)
            most = max(most, behind.in_flight)
    finally:
        os.close(fd)
    # The longest Ctrl-C could wait: what was in flight, and the chunk being written then.
    wait = (most + writer.CHUNK) / rate
    assert wait <= writer.WRITE_BEHIND_SECONDS + 2 * writer.CHUNK / rate
    # Still enough in flight to keep the card busy: a second of it, up to WRITE_BEHIND.
    assert most >= min(rate * writer.WRITE_BEHIND_SECONDS, writer.WRITE_BEHIND) - writer.CHUNK


def test_sigterm_stops_a_flash_as_ctrl_c_does(image: Path, tmp_path: Path) -> None:
    """`kill` (a CI timeout, systemd, a background job that Ctrl-C does not reach) says what the card is left as."""
    before = signal.getsignal(signal.SIGTERM)

    def terminate(p: Progress) -> None:
        if p.phase == "write" and p.done >= 8 * MIB:
            # Without a handler of its own, SIGTERM would end this test run on the spot.
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN), "SIGTERM is not caught"
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted, match=r"interrupted after \d+ of 48 MiB: .* is INCOMPLETE: its partition table"):
        writer.flash(image, tmp_path / "out.img", to_file=True, progress=terminate)
    assert signal.getsignal(signal.SIGTERM) == before  # put back on the way out
    assert (tmp_path / "out.img").read_bytes()[:512] == bytes(512)  # no partition table


def test_ctrl_c_while_the_partition_table_is_written_last_says_so(
    image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not "it has no partition table": it may have all of the image, unverified."""

    def interrupted(self: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(writer._WriteBehind, "finish", interrupted)
    with pytest.raises(Interrupted) as err:
        writer.flash(image, tmp_path / "out.img", to_file=True)
    text = str(err.value)
    assert "interrupted at the very end" in text and "may hold the whole image, but it is NOT verified" in text
    assert "INCOMPLETE" not in text and "has none" not in text and "Run the same command again" in text


def test_a_second_ctrl_c_still_says_what_the_first_left(monkeypatch: pytest.MonkeyPatch) -> None:
    def flash(*args: object, **kwargs: object) -> None:
        try:
            raise Interrupted("interrupted after 8 of 1024 MiB: /dev/sdz is INCOMPLETE")
        finally:
            raise KeyboardInterrupt  # pressed again while the card was closed

    monkeypatch.setattr(writer, "flash", flash)
    res = run_cli(["flash", "x.img", "/dev/sdz"])
    assert res.code == Interrupted.exit_code
    assert res.err == "pibake: error: interrupted after 8 of 1024 MiB: /dev/sdz is INCOMPLETE\n"


def test_sigterm_is_left_alone_where_someone_else_handles_it() -> None:
    from pibake.util.interrupt import sigterm_as_interrupt

    def mine(signum: int, frame: object) -> None:
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


def test_the_script_flashes_the_demo_image_by_default(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[2] / "scripts" / "flash.py"
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "card.img"), "--to-file"],
        cwd=tmp_path,  # no build/ here: the default image is missing
        capture_output=True,
        text=True,
    )
    assert res.returncode == UsageError.exit_code
    assert "image build/pibake-demo.img does not exist: build it first (`make demo`)" in res.stderr
    assert "Traceback" not in res.stderr
