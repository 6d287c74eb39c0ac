"""Snapshot starts: a booted guest saved once (qemu's migration stream and its disk overlay), restored in seconds.

The first `emulate start` of an image with a given profile, CPU, memory, boot files, command line
and forwarded guest ports boots cold; once SSH answers, the guest is paused, its state streamed to
a file with qemu's `migrate` (QEMU's docs/devel/migration.rst), its copy-on-write overlay copied,
and it runs on. Later starts with the same key start qemu with `-incoming` from that file on a
private copy of the overlay, then set the guest's clock to the host's and reseed its random
number generator before anything else runs. The key holds the image's sha256, so an image that
changed by one byte never meets an old snapshot.

Snapshots live in cache/snapshots/<key>/ (state, disk.qcow2, meta.json); the least recently used
are removed when they pass $PIBAKE_SNAPSHOT_MAX_MB (default 4096 MiB).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paramiko

from pibake.emulate import profiles
from pibake.emulate.qmp import QMP, QMPError
from pibake.emulate.ssh import connect
from pibake.errors import PibakeError
from pibake.util.cache import cache_root, recipe_hash, sha256_file
from pibake.util.proc import run

if TYPE_CHECKING:
    from pibake.emulate.guest import Guest
    from pibake.emulate.profiles import Launch, Profile

log = logging.getLogger(__name__)

# Bump when what a snapshot holds or how it is restored changes: old ones are then never used.
FORMAT = 1
DEFAULT_MAX_MB = 4096
# A migration of a 1 GiB guest to a local file takes a few seconds (measured here: see README);
# this bound only catches a migration that never ends.
SAVE_TIMEOUT = 300.0

# Run as root on the guest after a restore, with tools every Debian system has (coreutils, dash,
# perl-base: all Essential): wait for the host's time and random bytes on stdin, set CLOCK_REALTIME,
# credit the bytes to the kernel's input pool (RNDADDENTROPY) and force its CRNG to reseed from it
# (RNDRESEEDCRNG, Linux 4.17+); ioctl numbers from <linux/random.h>. A Python here would cost
# seconds on an emulated core.
_RESEED = (
    'open(my $f, ">", "/dev/urandom") or die "urandom: $!"; my $h = <STDIN>; chomp $h; my $d = pack("H*", $h); '
    'ioctl($f, 0x40085203, pack("ii", 8 * length($d), length($d)) . $d) or die "RNDADDENTROPY: $!"; '
    'ioctl($f, 0x5207, 0) or die "RNDRESEEDCRNG: $!"; print "done\\n";'
)
_REFRESH = 'echo ready; read ns seed; date -u -s "@$ns" >/dev/null && echo "$seed" | perl -e ' + shlex.quote(_RESEED)
SEED_BYTES = 64


@dataclass(frozen=True)
class Snapshot:
    """A saved guest: PATH/state (qemu's migration stream), PATH/disk.qcow2, PATH/meta.json."""

    key: str
    path: Path

    @property
    def state(self) -> Path:
        return self.path / "state"

    @property
    def disk(self) -> Path:
        return self.path / "disk.qcow2"

    @property
    def meta(self) -> Path:
        return self.path / "meta.json"

    def incoming(self) -> str:
        """The -incoming URI that streams this snapshot's state into a new qemu."""
        return "exec:cat " + shlex.quote(str(self.state))


def snapshots_dir() -> Path:
    return cache_root() / "snapshots"


def image_digest(path: Path) -> str:
    """The sha256 (hex) of the file at PATH, remembered by its inode, size, mtime and ctime.

    ctime changes on every write and cannot be set by a user, so an image that changed is hashed
    again. A 2 GiB image takes about 3 s to hash here.
    """
    st = path.stat()
    stamp = f"{path.resolve()}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    memo = cache_root() / "digests" / hashlib.sha256(stamp.encode()).hexdigest()
    with contextlib.suppress(OSError):
        return memo.read_text().strip()
    digest = sha256_file(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(digest + "\n")
    tmp.replace(memo)
    return digest


def launch_key(image: Path, profile: Profile, launch: Launch, binary: str) -> str:
    """The snapshot key of booting IMAGE with PROFILE and LAUNCH: a hex sha256 of everything the guest sees.

    Host-side details (ports on 127.0.0.1, socket and log paths, the drive's file name) are left
    out: the guest cannot tell them apart. The guest ports forwarded are in, as is the qemu version.
    """
    files = {
        "kernel": launch.kernel,
        "initrd": launch.initrd,
        "dtb": launch.dtb,
    }
    return recipe_hash(
        {
            "format": FORMAT,
            "qemu": profiles.qemu_version(binary),
            "image": image_digest(image),
            "profile": asdict(profile),
            "cpu": profile.resolve_cpu(launch.cpu),
            "memory_mb": launch.memory_mb or profile.memory_mb,
            "files": {k: sha256_file(v) if v is not None else None for k, v in files.items()},
            "cmdline": launch.cmdline,
            "guest_ports": sorted(guest for _, guest in launch.forwards),
        }
    )


def find(key: str) -> Snapshot | None:
    """The complete snapshot saved under KEY, or None (also when saving it was found impossible)."""
    snap = Snapshot(key, snapshots_dir() / key)
    if snap.meta.is_file() and snap.state.is_file() and snap.disk.is_file():
        with contextlib.suppress(OSError):
            os.utime(snap.meta)  # most recently used
        return snap
    return None


def unsupported(key: str) -> str | None:
    """Why a guest with KEY could not be saved the last time it was tried, or None."""
    with contextlib.suppress(OSError):
        return (snapshots_dir() / f"{key}.unsupported").read_text().strip()
    return None


def discard(snap: Snapshot, reason: str) -> None:
    log.warning("discarding snapshot %s: %s", snap.key[:12], reason)
    shutil.rmtree(snap.path, ignore_errors=True)


def save(guest: Guest, key: str, *, qmp_socket: Path, overlay: Path, meta: dict[str, Any]) -> Snapshot | None:
    """Pause GUEST, stream its state and copy its OVERLAY into a new snapshot under KEY, and let it run on.

    Returns None (and remembers why, so later starts do not try again) when qemu cannot migrate
    this machine; the guest runs on either way. The guest's clock stood still while paused:
    call `refresh` afterwards. Raises OSError when qemu's QMP socket does not answer.
    """
    final = snapshots_dir() / key
    tmp = snapshots_dir() / f".{key}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.monotonic()
    try:
        with QMP(qmp_socket, timeout=30) as q:
            q.execute("stop")
            try:
                try:
                    q.execute("migrate", uri="exec:cat > " + shlex.quote(str(tmp / "state")))
                    _wait_migrated(q)
                except QMPError as e:
                    (snapshots_dir() / f"{key}.unsupported").write_text(f"{e}\n")
                    log.warning("cannot snapshot %s on %s: %s (later starts boot cold)", guest.name, guest.profile, e)
                    return None
                # The migration flushed and released the overlay; it is consistent until `cont`.
                shutil.copyfile(overlay, tmp / "disk.qcow2")
            finally:
                q.execute("cont")
        seconds = time.monotonic() - t0
        (tmp / "meta.json").write_text(
            json.dumps(
                {**meta, "key": key, "saved_at": time.time(), "save_seconds": round(seconds, 1)},
                indent=2,
                sort_keys=True,
            )
            + "\n"
        )
        if final.exists():  # another process saved the same guest meanwhile: keep theirs
            return find(key)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = _bytes(final)
    log.info("saved snapshot %s of %s in %.1f s (%d MiB)", key[:12], guest.name, seconds, size >> 20)
    evict(keep=key)
    return Snapshot(key, final)


def _wait_migrated(q: QMP) -> None:
    deadline = time.monotonic() + SAVE_TIMEOUT
    while True:
        info = q.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise QMPError(f"migration {status}: {info.get('error-desc', 'no reason given')}")
        if time.monotonic() > deadline:
            q.execute("migrate_cancel")
            raise QMPError(f"migration did not complete within {SAVE_TIMEOUT:.0f} s")
        time.sleep(0.1)


def restore_disk(snap: Snapshot, image: Path, dest: Path) -> None:
    """Copy SNAP's overlay to DEST (the new guest's own) with IMAGE as its backing file.

    IMAGE has the digest the snapshot was saved with (it is in the key), so pointing the copy at it
    is safe wherever the image now lives.
    """
    shutil.copyfile(snap.disk, dest)
    run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", str(image), "-F", "raw", str(dest)])


def resume(qmp_socket: Path, *, alive: Callable[[], bool], timeout: float = 120) -> float:
    """Wait until the qemu restoring a snapshot (started with -incoming) has read it, then let the guest run.

    The snapshot was saved while paused, and qemu keeps the run state it was saved in (QEMU's
    migration/global_state.c): the restored guest waits for `cont`. Returns the seconds the
    restore took. Raises PibakeError when qemu exits (ALIVE() false), fails the restore, or
    does not finish within TIMEOUT seconds.
    """
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        if not alive():
            raise PibakeError("qemu exited while restoring the snapshot")
        if time.monotonic() > deadline:
            raise PibakeError(f"qemu did not restore the snapshot within {timeout:.0f} s")
        try:
            with QMP(qmp_socket, timeout=10) as q:
                while True:
                    state = q.execute("query-status")["status"]
                    if state != "inmigrate":
                        break
                    if not alive() or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                if state in ("paused", "postmigrate", "prelaunch"):
                    q.execute("cont")
                    return time.monotonic() - t0
                if state == "running":
                    return time.monotonic() - t0
                if state != "inmigrate":
                    raise PibakeError(f"qemu could not restore the snapshot (run state {state})")
        except OSError:
            time.sleep(0.1)


def refresh(guest: Guest, *, timeout: float = 60) -> None:
    """Set GUEST's clock to the host's and reseed its kernel's random number generator.

    A restored guest wakes with the clock and the CRNG state of the moment it was saved: every
    restore would otherwise share them (TLS, SSH and UUIDs drawn from the same stream). The
    host's time is sent once the guest's shell is ready, so the clock is off by one loopback
    round trip at most. Raises PibakeError when the guest refuses.
    """
    client = connect(guest.ssh_port, guest.user, Path(guest.private_key), timeout=timeout)
    try:
        stdin, stdout, stderr = client.exec_command("sudo -n sh -c " + shlex.quote(_REFRESH), timeout=timeout)
        ready = stdout.readline()
        if ready.strip() != "ready":
            raise PibakeError(
                f"{guest.name}: could not set the clock after a snapshot restore: {ready}{stderr.read().decode()}"
            )
        now = time.time_ns()
        stdin.write(f"{now // 10**9}.{now % 10**9:09d} {secrets.token_hex(SEED_BYTES)}\n")
        stdin.flush()
        stdin.channel.shutdown_write()
        out = stdout.read().decode(errors="replace")
        code = stdout.channel.recv_exit_status()
        if code != 0 or "done" not in out:
            raise PibakeError(
                f"{guest.name}: could not set the clock and reseed after a snapshot restore (exit {code}): "
                f"{out}{stderr.read().decode(errors='replace')}"
            )
    except (OSError, paramiko.SSHException) as e:
        raise PibakeError(f"{guest.name}: could not set the clock after a snapshot restore: {e}") from e
    finally:
        client.close()


def _bytes(directory: Path) -> int:
    """Bytes in the files of a snapshot's DIRECTORY (state, disk.qcow2, meta.json)."""
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def evict(*, keep: str | None = None, max_bytes: int | None = None) -> list[str]:
    """Remove the least recently used snapshots until they take at most MAX_BYTES (default
    $PIBAKE_SNAPSHOT_MAX_MB MiB, else DEFAULT_MAX_MB); never KEEP. Returns the removed keys."""
    if max_bytes is None:
        max_bytes = int(os.environ.get("PIBAKE_SNAPSHOT_MAX_MB", DEFAULT_MAX_MB)) << 20
    root = snapshots_dir()
    if not root.is_dir():
        return []
    entries = []
    for d in root.iterdir():
        if d.name.startswith(".") or not d.is_dir() or not (d / "meta.json").is_file():
            continue
        size = _bytes(d)
        entries.append(((d / "meta.json").stat().st_mtime, d, size))
    total = sum(size for _, _, size in entries)
    removed = []
    for _, d, size in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        if d.name == keep:
            continue
        shutil.rmtree(d, ignore_errors=True)
        total -= size
        removed.append(d.name)
        log.info("removed snapshot %s (least recently used; snapshots over %d MiB)", d.name[:12], max_bytes >> 20)
    return removed


def listing() -> list[dict[str, Any]]:
    """Every saved snapshot's meta.json, most recently used first."""
    root = snapshots_dir()
    out = []
    for meta in sorted(root.glob("*/meta.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(meta.read_text())
            data["bytes"] = _bytes(meta.parent)
            out.append(data)
    return out


def clear() -> int:
    """Remove every snapshot (and every remembered failure to save one); returns how many snapshots."""
    root = snapshots_dir()
    if not root.is_dir():
        return 0
    count = sum(1 for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    shutil.rmtree(root)
    return count
