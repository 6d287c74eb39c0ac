"""flash against real loop devices: every refusal, sparse writes with and without a bmap, a killed
write and its rerun, and a verification that catches a card changed behind the page cache.

Loop devices report removable=0, which makes the non-removable refusal testable; every other
test passes --allow-non-removable. Each loop device is backed by a file in tmp_path, and is
detached (and unmounted) at teardown whatever the test did.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pibake.disk.layout import parse_mbr
from pibake.errors import Interrupted, PibakeError, Refused, VerificationFailed
from pibake.flash import bmap, device, safety, writer
from pibake.util.progress import Progress
from tests.conftest import REPO, run_cli

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root"),
]

MIB = 1 << 20
GIB = 1 << 30

MakeLoop = Callable[..., Path]


def _mounts_of(dev: Path) -> list[str]:
    text = Path("/proc/self/mountinfo").read_text()
    return [m.mount_point for m in safety.parse_mountinfo(text) if m.source.startswith(str(dev))]


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[MakeLoop]:
    """make(size) -> /dev/loopN over a sparse file of SIZE bytes (or over BACKING); all detached at teardown."""
    made: list[Path] = []

    def make(size: int = 0, *, backing: Path | None = None, partitions: bool = False) -> Path:
        if backing is None:
            backing = tmp_path / f"card{len(made)}.img"
            with backing.open("wb") as f:
                f.truncate(size)
        res = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"no loop device: {res.stderr.strip()}")
        dev = Path(res.stdout.strip())
        made.append(dev)
        if partitions:
            # partx adds the partitions from user space; some kernels have no MBR parser of their own.
            subprocess.run(["partx", "-a", str(dev)], check=True, capture_output=True)
        return dev

    yield make
    for dev in reversed(made):
        for mount_point in sorted(_mounts_of(dev), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount_point], check=False)
        subprocess.run(["partx", "-d", str(dev)], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", str(dev)], check=False)


def backing_of(dev: Path) -> Path:
    return Path((Path("/sys/block") / dev.name / "loop" / "backing_file").read_text().strip())


def make_image(path: Path, size: int, *, seed: int = 1, data: list[tuple[int, int]] | None = None) -> Path:
    """A sparse disk image: an MBR with a FAT and a Linux partition, random data in a few places."""
    rnd = random.Random(seed)
    with path.open("wb") as f:
        f.truncate(size)
    table = f"label: dos\nlabel-id: 0x{seed:08x}\nstart=8192, size=131072, type=c\nstart=139264, type=83\n"
    subprocess.run(["sfdisk", "-q", str(path)], input=table, text=True, check=True)
    with path.open("r+b") as f:
        for offset, length in data or [(4 * MIB, 2 * MIB), (100 * MIB, 8 * MIB), (size // 2 + 12345, MIB + 7)]:
            f.seek(offset)
            f.write(rnd.randbytes(length))
        f.seek(size - 5000)
        f.write(rnd.randbytes(5000))
    return path


def same_prefix(image: Path, medium: Path) -> bool:
    """Does MEDIUM (the loop's backing file: what landed on the 'card') start with IMAGE, byte for byte?"""
    res = subprocess.run(["cmp", "-n", str(image.stat().st_size), str(image), str(medium)], capture_output=True)
    return res.returncode == 0


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MIB):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def big_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 GiB sparse image with about 11 MiB of data, and its bmap beside it."""
    img = make_image(tmp_path_factory.mktemp("big") / "big.img", GIB)
    bmap.create(img, bmap.default_path(img))
    return img


@pytest.fixture
def small_image(tmp_path: Path) -> Path:
    return make_image(tmp_path / "small.img", 80 * MIB, data=[(4 * MIB, MIB)])


def flash_cli(image: Path, dev: Path, *extra: str) -> tuple[int, str, str]:
    res = run_cli(["flash", str(image), str(dev), *extra])
    return res.code, res.out, res.err


# --- refusals: a clear message, and nothing written -------------------------------------------------


def test_refuses_a_partition_and_names_the_disk(loop: MakeLoop, small_image: Path, tmp_path: Path) -> None:
    target = make_image(tmp_path / "target.img", 200 * MIB, seed=2)
    dev = loop(backing=target, partitions=True)
    part = Path(f"{dev}p1")
    assert part.exists()
    before = sha256_of(target)
    code, _, err = flash_cli(small_image, part, "--allow-non-removable", "--yes")
    assert code == Refused.exit_code
    assert f"{part} is partition 1 of {dev}, not a whole disk" in err
    assert sha256_of(target) == before


def _root_disk() -> Path | None:
    """The whole disk that holds /, from /proc/self/mountinfo and sysfs (None in a container on overlayfs)."""
    mounts = safety.parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    root = [m for m in mounts if m.mount_point == "/"][-1]
    node = Path("/sys/dev/block") / root.devno
    if not node.exists():
        return None
    node = node.resolve()
    disk = node.parent if (node / "partition").exists() else node
    return Path("/dev") / disk.name


def test_refuses_the_disk_holding_root(tmp_path: Path) -> None:
    disk = _root_disk()
    if disk is None or not disk.exists():
        pytest.skip("/ is not on a block device here")
    img = tmp_path / "tiny.img"
    img.write_bytes(b"\x00" * MIB)
    code, _, err = flash_cli(img, disk, "--allow-non-removable", "--yes", "--unmount")
    assert code == Refused.exit_code
    assert f"refusing to write to {disk}; nothing was written" in err
    assert "holds / (from " in err and "of the running system" in err


def test_refuses_a_mounted_filesystem_then_unmount_proceeds(
    loop: MakeLoop, small_image: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pibake")
    dev = loop(128 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-L", "oldcard", str(dev)], check=True)
    mnt = tmp_path / "media" / "oldcard"
    mnt.mkdir(parents=True)
    subprocess.run(["mount", str(dev), str(mnt)], check=True)
    (mnt / "photo.jpg").write_bytes(b"precious")

    code, _, err = flash_cli(small_image, dev, "--allow-non-removable", "--yes")
    assert code == Refused.exit_code
    assert f"has mounted filesystems ({dev} on {mnt})" in err and "pass --unmount" in err
    assert (mnt / "photo.jpg").read_bytes() == b"precious"  # still mounted, untouched
    # Behind the checks, the kernel's own: O_EXCL on a device with a mounted filesystem is refused.
    with pytest.raises(Refused, match="is busy"):
        device.open_target(dev, block_device=True, image_size=MIB)

    code, out, err = flash_cli(small_image, dev, "--allow-non-removable", "--yes", "--unmount")
    assert code == 0, err
    assert f"unmounting {mnt}" in caplog.text
    assert _mounts_of(dev) == []
    assert "verified" in out
    assert same_prefix(small_image, backing_of(dev))


def test_refuses_a_device_in_use_as_swap(loop: MakeLoop, small_image: Path) -> None:
    dev = loop(128 * MIB)
    subprocess.run(["mkswap", "-q", str(dev)], check=True)
    if subprocess.run(["swapon", str(dev)], capture_output=True).returncode:
        pytest.skip("swapon is not allowed here")
    try:
        code, _, err = flash_cli(small_image, dev, "--allow-non-removable", "--yes", "--unmount")
    finally:
        subprocess.run(["swapoff", str(dev)], check=True)
    assert code == Refused.exit_code
    assert f"{dev} is in use as swap ({dev.name})" in err and "swapoff" in err


def test_refuses_non_removable_without_the_flag(loop: MakeLoop, small_image: Path) -> None:
    dev = loop(128 * MIB)
    code, _, err = flash_cli(small_image, dev, "--yes")
    assert code == Refused.exit_code
    assert f"{dev} is not a removable device (/sys/block/{dev.name}/removable is 0)" in err
    assert "--allow-non-removable" in err
    with pytest.raises(Refused, match="is not a removable device"):  # the kind, from the library itself
        writer.flash(small_image, dev, assume_yes=True, eject=False)
    assert sha256_of(backing_of(dev)) == hashlib.sha256(bytes(128 * MIB)).hexdigest()


def test_refuses_an_image_larger_than_the_device(loop: MakeLoop, small_image: Path) -> None:
    dev = loop(64 * MIB)
    code, _, err = flash_cli(small_image, dev, "--allow-non-removable", "--yes")
    assert code == Refused.exit_code
    assert f"the image (80.0 MiB) does not fit on {dev} (64.0 MiB)" in err


def test_refuses_the_loop_device_of_the_image_itself(loop: MakeLoop, small_image: Path) -> None:
    dev = loop(backing=small_image)
    before = sha256_of(small_image)
    code, _, err = flash_cli(small_image, dev, "--allow-non-removable", "--yes")
    assert code == Refused.exit_code and f"{dev} is the loop device of the image {small_image} itself" in err
    assert sha256_of(small_image) == before


def test_refuses_a_regular_file_without_to_file(small_image: Path, tmp_path: Path) -> None:
    target = tmp_path / "card.img"
    target.write_bytes(b"not a card")
    code, _, err = flash_cli(small_image, target)
    assert code == Refused.exit_code and "is not a block device" in err and "--to-file" in err
    assert target.read_bytes() == b"not a card"


def test_confirmation_typed_wrong_then_right(
    loop: MakeLoop, small_image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = loop(128 * MIB)
    monkeypatch.setattr("sys.stdin", io.StringIO("loop99\n"))
    code, _, err = flash_cli(small_image, dev, "--allow-non-removable")
    assert code == Refused.exit_code
    assert f"{dev} will be overwritten with {small_image}" in err  # the description came first
    assert f"Type the device name ({dev.name}) to go on" in err
    assert f"you typed 'loop99', not '{dev.name}': nothing was written" in err
    assert sha256_of(backing_of(dev)) == hashlib.sha256(bytes(128 * MIB)).hexdigest()

    monkeypatch.setattr("sys.stdin", io.StringIO(f"{dev.name}\n"))
    code, out, err = flash_cli(small_image, dev, "--allow-non-removable")
    assert code == 0, err
    assert "verified" in out
    assert same_prefix(small_image, backing_of(dev))


# --- writing ----------------------------------------------------------------------------------------


def test_sparse_image_without_bmap(loop: MakeLoop, big_image: Path) -> None:
    dev = loop(GIB + 64 * MIB)
    res = writer.flash(big_image, dev, full=True, allow_non_removable=True, assume_yes=True)
    assert res.bmap is None and res.bytes_written == GIB and res.verified
    assert res.sha256 == sha256_of(big_image)
    assert same_prefix(big_image, backing_of(dev))


def test_sparse_image_with_its_bmap(loop: MakeLoop, big_image: Path, tmp_path: Path) -> None:
    # A used card: the bmap leaves its old bytes in the unmapped blocks, and that is fine.
    target = tmp_path / "used.img"
    with target.open("wb") as f:
        f.truncate(GIB + 64 * MIB)
        f.seek(300 * MIB)
        f.write(b"old photo" * 1000)
    dev = loop(backing=target)
    res = writer.flash(big_image, dev, allow_non_removable=True, assume_yes=True)
    mapped = bmap.load(bmap.default_path(big_image)).mapped_bytes
    assert res.bmap == bmap.default_path(big_image) and res.verified
    assert res.bytes_written == mapped < 16 * MIB
    with target.open("rb") as f:
        for extent in bmap.load(bmap.default_path(big_image)).extents():
            f.seek(extent.offset)
            assert hashlib.sha256(f.read(extent.length)).hexdigest() == extent.checksum
        f.seek(300 * MIB)
        assert f.read(9) == b"old photo"


def test_bmaptools_bmap_is_used(loop: MakeLoop, small_image: Path, tmp_path: Path) -> None:
    if subprocess.run(["which", "bmaptool"], capture_output=True).returncode:
        pytest.skip("bmaptool is not installed (bmap-tools)")
    theirs = tmp_path / "theirs.bmap"
    subprocess.run(["bmaptool", "create", "-o", str(theirs), str(small_image)], check=True, capture_output=True)
    dev = loop(128 * MIB)
    code, out, err = flash_cli(small_image, dev, "--allow-non-removable", "--yes", "--bmap", str(theirs))
    assert code == 0, err
    assert "bmap theirs.bmap" in out
    assert same_prefix(small_image, backing_of(dev))


# --- interrupted writes -----------------------------------------------------------------------------

# Runs the real CLI in a child process, and stops it at a quarter of the write so the
# parent can kill or interrupt it there, whatever the speed of the disk.
CHILD = """
import sys, time
from pibake import cli
from pibake.util import progress

report = progress.Meter.report

def pause_mid_write(self):
    report(self)
    if self.phase == "write" and self.done >= self.total // 4:
        print("MID-WRITE", self.done, flush=True)
        time.sleep(600)

progress.Meter.report = pause_mid_write
sys.exit(cli.main(sys.argv[1:]))
"""


def _start_and_pause(tmp_path: Path, image: Path, dev: Path) -> subprocess.Popen[str]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    args = [sys.executable, str(script), "flash", str(image), str(dev), "--allow-non-removable", "--yes", "--no-bmap"]
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert child.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([child.stdout], [], [], 1)
        if ready:
            line = child.stdout.readline()
            if line.startswith("MID-WRITE"):
                return child
            if not line:
                break
    child.kill()
    pytest.fail(f"the child never got mid-write: {child.communicate()[1]}")


def test_killed_mid_write_then_rerun_succeeds(loop: MakeLoop, big_image: Path, tmp_path: Path) -> None:
    dev = loop(GIB + 64 * MIB)
    medium = backing_of(dev)
    child = _start_and_pause(tmp_path, big_image, dev)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    # The partition table is written last: a killed write leaves a card with none.
    with medium.open("rb") as f:
        head = f.read(4 * MIB)
    assert head == bytes(4 * MIB)
    with pytest.raises(PibakeError, match="no 0x55AA boot signature"):
        parse_mbr(head[:512])

    code, out, err = flash_cli(big_image, dev, "--allow-non-removable", "--yes", "--no-bmap")
    assert code == 0, err
    assert "verified" in out
    assert same_prefix(big_image, medium)
    assert parse_mbr(medium.read_bytes()[:512]).disk_id == 1


def test_ctrl_c_mid_write_says_the_card_is_incomplete(loop: MakeLoop, big_image: Path, tmp_path: Path) -> None:
    dev = loop(GIB + 64 * MIB)
    child = _start_and_pause(tmp_path, big_image, dev)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == Interrupted.exit_code == 130, err
    assert f"{dev} is INCOMPLETE" in err and "Run the same command again" in err
    assert "pibake: error: interrupted after " in err
    assert "Traceback" not in err


# --- verification -----------------------------------------------------------------------------------


@pytest.mark.parametrize("with_bmap", [False, True])
def test_verification_reads_the_device_not_the_cache(loop: MakeLoop, big_image: Path, with_bmap: bool) -> None:
    """Corrupt the medium under the loop device between writing and reading back.

    The bytes are changed in the loop's backing file, below the loop device's own page
    cache, at an offset that was written last (the partition table) and so is still
    cached: only a verification that drops the cache and really reads the device sees it.
    """
    dev = loop(GIB + 64 * MIB)
    medium = backing_of(dev)

    def corrupt(p: Progress) -> None:
        if p.phase == "verify" and p.done == 0:
            fd = os.open(medium, os.O_WRONLY)
            try:
                os.pwrite(fd, b"\xee" * 16, 600)
                os.fsync(fd)
            finally:
                os.close(fd)

    with pytest.raises(VerificationFailed, match=r"verification failed: .* first at byte 600 \(sector 1\)") as err:
        writer.flash(big_image, dev, full=not with_bmap, allow_non_removable=True, assume_yes=True, progress=corrupt)
    assert "do not use it" in str(err.value)
