"""flash against real loop devices: every refusal, sparse writes with and without a bmap, a killed
write and its rerun, and a verification that catches a card changed behind the page cache.

Loop devices report removable=0, which makes the non-removable refusal testable; every other
test passes --allow-non-removable. Each loop device is backed by a file in tmp_path, and is
detached (and unmounted) at teardown whatever the test did.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import random
import select
import shutil
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
    # A used card: only the mapped blocks are copied from the image, and what the bmap leaves
    # out is zeroed on the device, so the card is the image, byte for byte.
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
    assert 0 < res.bytes_zeroed <= GIB - mapped
    assert res.sha256 == sha256_of(big_image)  # what the whole card was verified against
    with target.open("rb") as f:
        for extent in bmap.load(bmap.default_path(big_image)).extents():
            f.seek(extent.offset)
            assert hashlib.sha256(f.read(extent.length)).hexdigest() == extent.checksum
        f.seek(300 * MIB)
        assert f.read(9) == bytes(9)
    assert same_prefix(big_image, target)


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

# Runs the real CLI in a child process and says "MID-WRITE" once CHILD_MARK_BYTES (default: a
# quarter of the write) are written; with CHILD_PAUSE=1 (the default) it stops there, so that the
# parent can kill or interrupt it at that point whatever the speed of the disk.
#
# SIGINT is set as a terminal sets it for a foreground job, whoever started the tests: a shell
# starts a background job (`make test &`, a build run beside another) with SIGINT ignored, every
# child inherits that, and the Ctrl-C test's SIGINT then did nothing at all: the 60 s timeouts
# of issue 15, section 6. CHILD_SIGINT=ignored starts the child as such a background job.
CHILD = """
import os, signal, sys, time
from pibake import cli
from pibake.util import progress

ignored = os.environ.get("CHILD_SIGINT") == "ignored"
signal.signal(signal.SIGINT, signal.SIG_IGN if ignored else signal.default_int_handler)
mark = int(os.environ.get("CHILD_MARK_BYTES") or 0)
pause = os.environ.get("CHILD_PAUSE", "1") == "1"
report = progress.Meter.report
marked = []

def mark_mid_write(self):
    report(self)
    if self.phase == "write" and not marked and self.done >= (mark or self.total // 4):
        marked.append(self.done)
        print("MID-WRITE", self.done, flush=True)
        if pause:
            time.sleep(600)

progress.Meter.report = mark_mid_write
sys.exit(cli.main(sys.argv[1:]))
"""


def _start_mid_write(
    tmp_path: Path,
    image: Path,
    dev: Path,
    *,
    sigint: str = "default",
    mark: int = 0,
    pause: bool = True,
    preexec_fn: Callable[[], object] | None = None,
) -> subprocess.Popen[str]:
    """The flash of IMAGE onto DEV in a child process, returned once it is mid-write (see CHILD)."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    args = [sys.executable, str(script), "flash", str(image), str(dev), "--allow-non-removable", "--yes", "--no-bmap"]
    env = {**os.environ, "CHILD_SIGINT": sigint, "CHILD_MARK_BYTES": str(mark), "CHILD_PAUSE": "1" if pause else "0"}
    child = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env, preexec_fn=preexec_fn
    )
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


def _signal_and_wait(
    child: subprocess.Popen[str], sig: signal.Signals, *, within: float, again_after: float | None = None
) -> tuple[float, str]:
    """Send SIG to CHILD (and again AGAIN_AFTER seconds later); the seconds until it exited and its stderr.

    Killed, and a failure, past WITHIN seconds from the first SIG.
    """
    sent = time.monotonic()
    child.send_signal(sig)
    if again_after is not None:
        time.sleep(again_after)
        child.send_signal(sig)  # nothing, if it is already out
    try:
        _, err = child.communicate(timeout=max(within - (time.monotonic() - sent), 0.1))
    except subprocess.TimeoutExpired:
        child.kill()  # not left holding the loop device for the rest of its 600 s pause
        _, err = child.communicate()
        pytest.fail(f"the flash was still running {within:.0f} s after {sig.name}; its stderr:\n{err}")
    return time.monotonic() - sent, err


def _says_incomplete(err: str, dev: Path) -> None:
    assert f"{dev} is INCOMPLETE" in err and "Run the same command again" in err, err
    assert "pibake: error: interrupted after " in err
    assert "Traceback" not in err


def test_killed_mid_write_then_rerun_succeeds(loop: MakeLoop, big_image: Path, tmp_path: Path) -> None:
    dev = loop(GIB + 64 * MIB)
    medium = backing_of(dev)
    child = _start_mid_write(tmp_path, big_image, dev)
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
    child = _start_mid_write(tmp_path, big_image, dev)
    _, err = _signal_and_wait(child, signal.SIGINT, within=60)
    assert child.returncode == Interrupted.exit_code == 130, err
    _says_incomplete(err, dev)


LOAD_CPU = """
import sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    pass
"""

# Rewrites its file a MiB at a time, round and round, for SECONDS: buffered (dirty pages the
# kernel must write out, an fsync a lap) or with O_DIRECT (straight to the disk).
LOAD_DISK = """
import mmap, os, sys, time
path, seconds, direct = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "direct"
size, block = 256 << 20, 1 << 20
buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT wants
buf.write(os.urandom(block))
fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_DIRECT if direct else 0), 0o644)
end = time.monotonic() + seconds
offset = 0
while time.monotonic() < end:
    os.pwrite(fd, buf, offset)
    offset = (offset + block) % size
    if offset == 0 and not direct:
        os.fsync(fd)
"""


@contextlib.contextmanager
def _machine_loaded(where: Path, *, seconds: float = 120) -> Iterator[list[subprocess.Popen[bytes]]]:
    """CPU and disk load while inside: a busy loop per CPU, two buffered writers, one O_DIRECT writer.

    Each stops by itself after SECONDS; all are killed on the way out and their files removed.
    The writers' files are in WHERE, on the filesystem that holds the loop devices' media.
    """
    where.mkdir(exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(os.cpu_count() or 2):
            procs.append(subprocess.Popen([sys.executable, "-c", LOAD_CPU, str(seconds)]))
        for i, how in enumerate(("buffered", "buffered", "direct")):
            procs.append(
                subprocess.Popen([sys.executable, "-c", LOAD_DISK, str(where / f"load{i}"), str(seconds), how])
            )
        time.sleep(3)  # the writers get going, the page cache fills
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
        shutil.rmtree(where, ignore_errors=True)


def test_ctrl_c_under_cpu_and_disk_load_stops_within_seconds(loop: MakeLoop, big_image: Path, tmp_path: Path) -> None:
    """Ctrl-C while every CPU is busy and the disk is written hard: out with 130 in seconds, not minutes."""
    dev = loop(GIB + 64 * MIB)
    with _machine_loaded(tmp_path / "load") as load:
        child = _start_mid_write(tmp_path, big_image, dev, pause=False)  # interrupted while it writes
        assert all(proc.poll() is None for proc in load), "the load ended before the Ctrl-C"
        seconds, err = _signal_and_wait(child, signal.SIGINT, within=20)
    assert child.returncode == Interrupted.exit_code, err
    _says_incomplete(err, dev)
    logging.getLogger(__name__).info("Ctrl-C under load: out in %.1f s", seconds)


@contextlib.contextmanager
def _slow_writes(dev: Path, bytes_per_second: int) -> Iterator[Callable[[], object]]:
    """A blkio cgroup (v1) whose writes to DEV go at BYTES_PER_SECOND: DEV becomes a slow card for what runs in it.

    Yields the preexec_fn that puts a child process into it; the cgroup is removed on the way out.
    """
    blkio = Path("/sys/fs/cgroup/blkio")
    if not (blkio / "blkio.throttle.write_bps_device").exists():
        pytest.skip("no cgroup v1 blkio throttling here, to make a loop device as slow as a card")
    group = blkio / f"pibake-test-{os.getpid()}-{dev.name}"
    group.mkdir()
    try:
        rdev = dev.stat().st_rdev
        (group / "blkio.throttle.write_bps_device").write_text(f"{os.major(rdev)}:{os.minor(rdev)} {bytes_per_second}")
        yield lambda: (group / "cgroup.procs").write_text(str(os.getpid()))
    finally:
        group.rmdir()


def test_ctrl_c_on_a_slow_card_stops_within_seconds(loop: MakeLoop, big_image: Path, tmp_path: Path) -> None:
    """A card writing 2 MB/s (a slow one, or any on a busy machine): Ctrl-C waits for what is in flight.

    Closing a block device writes its pages out before the process can exit; with 64 MiB in
    flight that was 36 s here. The writer keeps about a second of the card in flight. Ctrl-C is
    pressed twice, as users do when it seems stuck: the second one, landing while the card is
    closed, used to replace the message with a bare "pibake: interrupted".
    """
    dev = loop(GIB + 64 * MIB)
    with _slow_writes(dev, 2_000_000) as into_the_cgroup:
        child = _start_mid_write(tmp_path, big_image, dev, mark=1, pause=False, preexec_fn=into_the_cgroup)
        time.sleep(5)  # writing at the card's pace, with as much in flight as the writer allows
        seconds, err = _signal_and_wait(child, signal.SIGINT, within=15, again_after=2)
    assert child.returncode == Interrupted.exit_code, err
    _says_incomplete(err, dev)
    logging.getLogger(__name__).info("Ctrl-C on a 2 MB/s card: out in %.1f s", seconds)


def test_sigterm_stops_a_background_flash_and_says_the_card_is_incomplete(
    loop: MakeLoop, big_image: Path, tmp_path: Path
) -> None:
    """A flash run as a background job ignores Ctrl-C, as background jobs do; `kill` stops it, saying what it left."""
    dev = loop(GIB + 64 * MIB)
    child = _start_mid_write(tmp_path, big_image, dev, sigint="ignored")
    child.send_signal(signal.SIGINT)
    time.sleep(1)
    assert child.poll() is None  # ignored, as the shell asked
    _, err = _signal_and_wait(child, signal.SIGTERM, within=20)
    assert child.returncode == Interrupted.exit_code, err
    _says_incomplete(err, dev)
    with backing_of(dev).open("rb") as f:
        assert f.read(4 * MIB) == bytes(4 * MIB)  # and it has no partition table


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


# --- the card holds the image's bytes, zeros included (issue 15, section 1) ---------------------------


def _filled(path: Path, size: int, byte: int) -> Path:
    """A file of SIZE bytes that all read BYTE: a used card's medium."""
    block = bytes([byte]) * (4 * MIB)
    with path.open("wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.write(block[: size % len(block)])
    return path


def _extract(medium: Path, offset: int, length: int, out: Path) -> Path:
    with medium.open("rb") as f, out.open("wb") as o:
        f.seek(offset)
        while length > 0 and (data := f.read(min(4 * MIB, length))):
            o.write(data)
            length -= len(data)
    return out


def test_written_zeros_reach_the_card(loop: MakeLoop, tmp_path: Path) -> None:
    """The issue's first case: 1 MiB of real zeros in an xz'd image, decompressed, mapped and flashed."""
    import lzma

    from pibake.image import fetch

    data = bytearray(b"\xaa" * (16 * MIB))
    data[8 * MIB : 9 * MIB] = bytes(MIB)
    archive = tmp_path / "d.img.xz"
    archive.write_bytes(lzma.compress(bytes(data), preset=0))
    image = tmp_path / "d.img"
    fetch.decompress(archive, "xz", image)
    bmap.create(image, bmap.default_path(image))
    medium = _filled(tmp_path / "card.img", 32 * MIB, 0xFF)
    dev = loop(backing=medium)
    code, out, err = flash_cli(image, dev, "--allow-non-removable", "--yes", "--no-eject")
    assert code == 0, err
    assert "verified" in out
    assert same_prefix(image, medium), "the card kept its old bytes where the image has zeros"


def _assembled_image(tmp_path: Path) -> Path:
    """An image assembled exactly as `pibake image build` assembles and publishes one: FAT32 + ext4 from trees."""
    from pibake.disk.layout import Layout
    from pibake.image import build
    from pibake.util.publish import publish

    root, boot = tmp_path / "root", tmp_path / "boot"
    for d in ("etc", "usr/bin", "var/lib/dpkg", "home/pi"):
        (root / d).mkdir(parents=True)
    (root / "etc/hostname").write_text("raspberrypi\n")
    (root / "usr/bin/tool").write_bytes(random.Random(3).randbytes(3 * MIB))
    (boot / "overlays").mkdir(parents=True)
    (boot / "config.txt").write_text("arm_64bit=1\n")
    (boot / "kernel8.img").write_bytes(random.Random(4).randbytes(5 * MIB))
    for i in range(30):
        (boot / "overlays" / f"o{i}.dtbo").write_bytes(random.Random(i).randbytes(1000 + 97 * i))
    work = tmp_path / "work"
    work.mkdir()
    assembled = work / "image.img"
    build.assemble(assembled, Layout(total_mb=1092, boot_mb=64), 0x1234ABCD, root, boot, work)
    # As `pibake image build -o` hands it over: published from the cache, with IMAGE.sha256.
    return publish(assembled, tmp_path / "assembled.img", sha256_of(assembled))


def _fs_clean(medium: Path, image: Path, tmp_path: Path) -> None:
    """Both filesystems of the card in MEDIUM (laid out as IMAGE) check clean, read-only."""
    mbr = parse_mbr(image.read_bytes()[:512])
    boot, root = mbr.partition(1), mbr.partition(2)
    fat = _extract(medium, boot.start * 512, boot.size * 512, tmp_path / "p1.fat")
    res = subprocess.run(["fsck.vfat", "-n", str(fat)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run(["e2fsck", "-fn", f"{medium}?offset={root.start * 512}"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def _ext4_free_blocks(image: Path, offset: int) -> set[int]:
    """Free blocks of the ext4 at OFFSET, as dumpe2fs lists them group by group."""
    out = subprocess.run(["dumpe2fs", f"{image}?offset={offset}"], capture_output=True, text=True, check=True).stdout
    free: set[int] = set()
    for line in out.splitlines():
        if line.startswith("  Free blocks: "):
            for part in filter(None, (p.strip() for p in line.split(":", 1)[1].split(","))):
                first, _, last = part.partition("-")
                free.update(range(int(first), int(last or first) + 1))
    return free


def test_an_assembled_image_flashed_with_its_bmap_onto_a_used_card(loop: MakeLoop, tmp_path: Path) -> None:
    """The issue's second case: pibake's own image, its bmap, a card whose every byte was 0x5A."""
    image = _assembled_image(tmp_path)
    made = bmap.create(image, bmap.default_path(image))

    # What bmaptool does with the bmap (mapped ranges only, the rest keeps its old bytes)
    # gives a card whose filesystems are sound: everything unmapped is free space.
    copied = _filled(tmp_path / "bmaptool-card.img", image.stat().st_size, 0x5A)
    with image.open("rb") as src, copied.open("r+b") as dst:
        for extent in made.extents():
            src.seek(extent.offset)
            dst.seek(extent.offset)
            dst.write(src.read(extent.length))
    _fs_clean(copied, image, tmp_path)
    root = parse_mbr(image.read_bytes()[:512]).partition(2)
    mapped = {b for e in made.extents() for b in range(e.offset // 4096, -(-e.end // 4096))}
    first = root.start * 512 // 4096
    free = _ext4_free_blocks(image, root.start * 512)
    unmapped_in_use = [b for b in range(root.size * 512 // 4096) if b + first not in mapped and b not in free]
    assert unmapped_in_use == [], f"ext4 blocks in use but left out of the bmap: {unmapped_in_use[:10]}..."

    # pibake flash makes the card the image, byte for byte, and says so only then.
    medium = _filled(tmp_path / "card.img", image.stat().st_size + 8 * MIB, 0x5A)
    dev = loop(backing=medium)
    code, out, err = flash_cli(image, dev, "--allow-non-removable", "--yes", "--no-eject")
    assert code == 0, err
    assert "verified" in out
    _fs_clean(medium, image, tmp_path)
    assert same_prefix(image, medium)


def test_verification_reads_the_unmapped_bytes_too(loop: MakeLoop, big_image: Path, tmp_path: Path) -> None:
    """With IMAGE.sha256 beside it, "verified" means every byte of the image's size on the card hashes to it."""
    image = tmp_path / "withsum.img"
    subprocess.run(["cp", "--reflink=never", "--sparse=auto", str(big_image), str(image)], check=True)
    bmap.create(image, bmap.default_path(image))
    (tmp_path / "withsum.img.sha256").write_text(f"{sha256_of(image)}  withsum.img\n")
    dev = loop(GIB + 64 * MIB)
    medium = backing_of(dev)
    unmapped = 300 * MIB  # no data there: the bmap leaves it out

    def corrupt(p: Progress) -> None:
        if p.phase == "verify" and p.done == 0:
            fd = os.open(medium, os.O_WRONLY)
            try:
                os.pwrite(fd, b"old photo", unmapped)
                os.fsync(fd)
            finally:
                os.close(fd)

    with pytest.raises(VerificationFailed, match=rf"first at byte {unmapped} "):
        writer.flash(image, dev, allow_non_removable=True, assume_yes=True, progress=corrupt)
