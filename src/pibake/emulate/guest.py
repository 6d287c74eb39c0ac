"""Boot an image under qemu-system-arm, wait for SSH, shut it down cleanly.

A guest's state lives in cache/guests/<name>/: state.json, the serial console log,
qemu's own log, the QMP socket, the kernel/initrd/cmdline read from the image and the
copy-on-write overlay. `start` returns once SSH answers; `stop` powers the guest off
over SSH, then by ACPI through QMP, and only then kills qemu.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import paramiko

from pibake import boards
from pibake.disk.layout import read_mbr
from pibake.emulate import inventory as ansible_inventory
from pibake.emulate import profiles, snapshot, sshkey
from pibake.emulate.boot import (
    boot_inputs,
    check_kernel_arch,
    check_power_of_two,
    emulated_cmdline,
    image_arch,
    read_config_txt,
)
from pibake.emulate.qmp import QMP, QMPError
from pibake.emulate.ssh import connect, free_port, ssh_banner, ssh_run
from pibake.errors import PibakeError, Refused, UsageError
from pibake.util import progress
from pibake.util.cache import cache_root
from pibake.util.proc import run

log = logging.getLogger(__name__)

POWER_DOWN_MARK = "reboot: Power down"
# Guest ports forwarded by default: the inference service (Triton's HTTP port).
DEFAULT_FORWARDS: tuple[int, ...] = (8000,)
SERIAL_TAIL = 30
# Seconds a restored guest gets to answer SSH before it is given up and booted cold (restores take 6-10 s here).
RESTORE_TIMEOUT = 60.0

# Children started by this process, so we can reap them (a dead child is a zombie
# until waited for, and a zombie still answers kill(pid, 0)).
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass
class Guest:
    name: str
    pid: int
    ssh_port: int
    user: str
    private_key: str
    serial_log: str
    profile: str
    cpu: str
    image: str
    overlay: str | None
    inventory: str | None
    started_at: float
    boot_seconds: float = 0.0
    board: str | None = None
    # Guest TCP port (as a string: JSON keys) -> the host port on 127.0.0.1 it is forwarded to.
    forwards: dict[str, int] = field(default_factory=dict)
    # What a reboot needs to boot the same way again.
    memory_mb: int | None = None
    kernel: str | None = None
    dtb: str | None = None
    # The snapshot key this guest was restored from; None after a cold boot.
    snapshot: str | None = None

    def host_port(self, guest_port: int) -> int:
        try:
            return self.forwards[str(guest_port)]
        except KeyError:
            raise PibakeError(
                f"guest {self.name} has no forward for its port {guest_port} "
                f"(forwarded: {', '.join(self.forwards) or 'none'}); start it with --forward {guest_port}"
            ) from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Guest:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Status:
    name: str
    running: bool
    guest: Guest | None

    def describe(self) -> str:
        if not self.guest:
            return f"{self.name}: not running"
        g = self.guest
        state = "running" if self.running else "not running (stale state)"
        return (
            f"{g.name}: {state}, pid {g.pid}, profile {g.profile} cpu {g.cpu}\n"
            f"  ssh: ssh -p {g.ssh_port} -i {g.private_key} {g.user}@127.0.0.1\n"
            + "".join(f"  port {gp}: 127.0.0.1:{hp}\n" for gp, hp in sorted(g.forwards.items()))
            + f"  image: {g.image}{' (overlay ' + g.overlay + ')' if g.overlay else ' (persistent)'}\n"
            f"  serial log: {g.serial_log}"
        )

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {"name": self.name, "running": self.running}
        if self.guest:
            data.update(asdict(self.guest))
        return data


@dataclass(frozen=True)
class Stopped:
    name: str
    was_running: bool
    clean: bool
    seconds: float


# ---------------------------------------------------------------- state


def state_dir(name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"invalid guest name {name!r}: use letters, digits, - and _")
    return cache_root() / "guests" / name


def _load(name: str) -> Guest | None:
    path = state_dir(name) / "state.json"
    if not path.exists():
        return None
    try:
        return Guest.from_json(path.read_text())
    except (ValueError, TypeError) as e:
        log.warning("ignoring unreadable guest state %s: %s", path, e)
        return None


def _alive(pid: int, sdir: Path) -> bool:
    """Is PID a live qemu of this guest (not a zombie, not a reused pid)?"""
    child = _children.get(pid)
    if child is not None:
        if child.poll() is not None:
            _children.pop(pid, None)
            return False
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    process_state = stat.rsplit(")", 1)[-1].split()[0]
    return process_state != "Z" and "qemu-system-" in cmdline and str(sdir) in cmdline


def status(name: str) -> Status:
    guest = _load(name)
    return Status(name, bool(guest and _alive(guest.pid, state_dir(name))), guest)


def serial_tail(path: Path | str, lines: int = SERIAL_TAIL) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no serial log)"
    tail = [ln.rstrip("\r") for ln in text.splitlines()[-lines:]]
    return "\n".join("  | " + ln for ln in tail) or "  | (serial log is empty)"


# ---------------------------------------------------------------- start


def _terminate(pid: int, sdir: Path, *, grace: float = 5) -> None:
    if not _alive(pid, sdir):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        end = time.monotonic() + grace
        while time.monotonic() < end:
            if not _alive(pid, sdir):
                return
            time.sleep(0.1)
    raise PibakeError(f"qemu (pid {pid}) would not die")


def emulation_for(
    board: str | None, profile: str | None, cpu: str | None, *, arch: str = "armhf"
) -> tuple[str, str | None]:
    """The (profile, CPU) to boot an ARCH image: the user's choice, else BOARD's from the board table, else the default.

    ARCH is the image's Debian architecture (boot.image_arch): an arm64 image boots on profile virt64
    with the board's own 64-bit core (Board.cpu64). Without a board: virt (armhf) or virt64 (arm64),
    with the profile's default CPU. Raises UsageError for an unknown board, a board no profile
    emulates (when PROFILE is None), or an arm64 image on a board that runs no 64-bit OS.
    """
    if board is None:
        return profile or (boards.PROFILE_64 if arch == "arm64" else "virt"), cpu
    return boards.emulation(boards.get(board), profile=profile, cpu=cpu, arch=arch)


def check_profile_arch(image: Path, prof: profiles.Profile, arch: str) -> None:
    """Refuse (UsageError) a profile whose emulator cannot run IMAGE's kernel: ARCH is the image's architecture."""
    if prof.arch != arch:
        want = boards.PROFILE_64 if arch == "arm64" else "virt"
        raise UsageError(
            f"{image} is a {'64-bit (arm64)' if arch == 'arm64' else '32-bit (armhf)'} image (its config.txt "
            f"{'sets' if arch == 'arm64' else 'does not set'} arm_64bit=1), and profile {prof.name} boots "
            f"{prof.arch} kernels with {profiles.qemu_binary(prof)}: use --profile {want} (or no --profile)"
        )


def start(
    image: Path,
    *,
    profile: str | None = None,
    cpu: str | None = None,
    board: str | None = None,
    name: str = "pibake",
    persist: bool = False,
    memory_mb: int | None = None,
    timeout: float = 300,
    inventory: Path | None = None,
    kernel: Path | None = None,
    dtb: Path | None = None,
    forward: tuple[int, ...] | None = None,
    cold: bool = False,
    renew_snapshot: bool = False,
    user: str = "pi",
    _reuse: Guest | None = None,
) -> Guest:
    """Boot IMAGE in the background and return once SSH answers (as USER, with the harness's key).

    PROFILE and CPU default to those that emulate BOARD (`emulation_for`). FORWARD: guest TCP
    ports reachable on 127.0.0.1 (each at a free host port, in Guest.forwards; default
    DEFAULT_FORWARDS). Unless COLD or PERSIST, the guest is restored from a snapshot of the same
    image and launch when one exists (seconds instead of a boot), and saved as one after a cold
    boot when none does (`pibake.emulate.snapshot`); RENEW_SNAPSHOT boots cold and saves a new one
    (what `pibake bench` times). Raises UsageError for bad arguments,
    Refused when a guest of that NAME runs, PibakeError when the guest never answers SSH.
    """
    forward = DEFAULT_FORWARDS if forward is None else forward
    image = image.resolve()
    for gp in forward:
        if not 0 < gp < 65536 or gp == 22:
            raise UsageError(f"cannot forward guest port {gp}: give a TCP port from 1 to 65535 other than 22 (SSH)")
    if not image.is_file():
        raise UsageError(
            f"no image at {image}: build one with `make image` (pibake image build --base debian-bullseye "
            "-o build/pibake-bullseye.img), or name the image"
        )
    read_mbr(image)
    config_txt = read_config_txt(image)
    arch = image_arch(config_txt)
    profile, cpu = emulation_for(board, profile, cpu, arch=arch)
    prof = profiles.load(profile)
    if kernel is None:
        check_profile_arch(image, prof, arch)
    else:
        check_kernel_arch(kernel, prof)
    profiles.check_machine(prof)
    cpu = prof.resolve_cpu(cpu)
    check_power_of_two(image, prof)
    sdir = state_dir(name)
    current = status(name)
    if current.running and current.guest:
        raise Refused(
            f"guest {name} is already running (pid {current.guest.pid}, ssh port {current.guest.ssh_port}); "
            f"stop it with `pibake emulate stop --name {name}` or choose another --name"
        )
    kept_overlay: Path | None = None
    if _reuse is not None and _reuse.overlay and Path(_reuse.overlay).exists():
        # A reboot: the overlay holds everything the guest wrote; keep it across the new state dir.
        kept_overlay = sdir.with_name(f".{name}.overlay.qcow2")
        Path(_reuse.overlay).replace(kept_overlay)
    if sdir.exists():
        shutil.rmtree(sdir)
    sdir.mkdir(parents=True)
    keys = sshkey.ensure_keypair()
    boot = boot_inputs(image, prof, sdir, config_txt=config_txt, kernel=kernel, dtb=dtb)
    launch = profiles.Launch(
        kernel=boot.kernel,
        initrd=boot.initrd,
        cmdline=emulated_cmdline(boot.cmdline),
        dtb=boot.dtb,
        drive=image,
        drive_format="raw",
        ssh_port=0,
        serial_log=sdir / "serial.log",
        qmp_socket=sdir / "qmp.sock",
        pidfile=sdir / "qemu.pid",
        cpu=cpu,
        memory_mb=memory_mb,
        forwards=tuple((0, gp) for gp in forward),
    )
    template = Guest(
        name=name,
        pid=0,
        ssh_port=0,
        user=user,
        private_key=str(keys.private_key),
        serial_log=str(launch.serial_log),
        profile=prof.name,
        cpu=cpu,
        image=str(image),
        overlay=None,
        inventory=str(inventory.resolve()) if inventory else None,
        started_at=0.0,
        board=board,
        memory_mb=memory_mb,
        kernel=str(kernel) if kernel else None,
        dtb=str(dtb) if dtb else None,
    )
    snap_key: str | None = None
    snap: snapshot.Snapshot | None = None
    guest: Guest | None = None
    if persist:
        guest = _boot(prof, launch, template, sdir, timeout=timeout, reuse=_reuse)
    else:
        overlay = sdir / "overlay.qcow2"
        launch = replace(launch, drive=overlay, drive_format="qcow2")
        template = replace(template, overlay=str(overlay))
        if not cold and _reuse is None and prof.snapshot:
            snap_key = snapshot.launch_key(image, prof, launch, profiles.qemu_binary(prof))
            snap = snapshot.find(snap_key)
            if snap is not None and renew_snapshot:
                snapshot.discard(snap, "a new one was asked for")
                snap = None
        if snap is not None:
            snapshot.restore_disk(snap, image, overlay)
            try:
                # A restored guest's sshd is already up: one that is silent for a minute will not answer.
                restore_timeout = min(timeout, RESTORE_TIMEOUT)
                guest = _boot(prof, replace(launch, incoming=snap.incoming()), template, sdir, timeout=restore_timeout)
                guest.snapshot = snap.key
            except PibakeError as e:
                if guest is not None:
                    _terminate(guest.pid, sdir)
                snapshot.discard(snap, f"restoring it failed ({e}); booting cold")
                guest = None
        if guest is None:
            if kept_overlay is not None:
                kept_overlay.replace(overlay)
            else:
                run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "raw", str(overlay)])
            try:
                guest = _boot(prof, launch, template, sdir, timeout=timeout, reuse=_reuse)
            except BaseException:
                overlay.unlink(missing_ok=True)
                raise
            if snap_key is not None and snapshot.unsupported(snap_key) is None:
                _save_snapshot(guest, snap_key, launch)
    assert guest is not None
    (sdir / "state.json").write_text(guest.to_json())
    if inventory:
        ansible_inventory.add_host(inventory, _inventory_host(guest))
    how = f"restored from snapshot {guest.snapshot[:12]}" if guest.snapshot else "booted"
    log.info("%s answers SSH after %.1f s (%s)", name, guest.boot_seconds, how)
    return guest


def _save_snapshot(guest: Guest, key: str, launch: profiles.Launch) -> None:
    """Save GUEST as the snapshot KEY and set its clock again (it stood still while saved)."""
    meta = {
        "image": guest.image,
        "profile": guest.profile,
        "cpu": guest.cpu,
        "memory_mb": launch.memory_mb,
        "guest_ports": sorted(guest.forwards),
        "boot_seconds": round(guest.boot_seconds, 1),
    }
    try:
        saved = snapshot.save(guest, key, qmp_socket=launch.qmp_socket, overlay=launch.drive, meta=meta)
    except OSError as e:
        log.warning("could not save a snapshot of %s (%s); later starts boot cold", guest.name, e)
        return
    if saved is not None:
        snapshot.refresh(guest)


def _boot(
    prof: profiles.Profile,
    launch: profiles.Launch,
    template: Guest,
    sdir: Path,
    *,
    timeout: float,
    reuse: Guest | None = None,
) -> Guest:
    """Start qemu for LAUNCH (ports chosen here, or REUSE's), wait for SSH, return the running Guest.

    On failure nothing is left running and PibakeError says why (the serial console's last lines).
    """
    guest: Guest | None = None
    for attempt in range(3):
        if reuse is not None and attempt == 0:
            # Same ports as before the reboot, so inventories and URLs stay valid.
            port = reuse.ssh_port
            forwards = {str(gp): reuse.forwards.get(str(gp)) or free_port() for _, gp in launch.forwards}
        else:
            port = free_port()
            forwards = {str(gp): free_port() for _, gp in launch.forwards}
        this = replace(launch, ssh_port=port, forwards=tuple((hp, int(gp)) for gp, hp in forwards.items()))
        argv = profiles.qemu_command(prof, this)
        log.info(
            "%s %s on %s (cpu %s), ssh on 127.0.0.1:%d, serial log %s",
            "restoring" if this.incoming else "booting",
            Path(template.image).name,
            prof.name,
            template.cpu,
            port,
            this.serial_log,
        )
        log.debug("qemu: %s", " ".join(argv))
        with (sdir / "qemu.log").open("wb") as qlog:
            # Own session: a Ctrl-C in the terminal reaches pibake, which shuts the guest down.
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT, start_new_session=True
            )
        _children[proc.pid] = proc
        guest = replace(template, pid=proc.pid, ssh_port=port, forwards=forwards, started_at=time.time())
        (sdir / "state.json").write_text(guest.to_json())
        time.sleep(0.5)
        if proc.poll() is not None and "hostfwd" in (sdir / "qemu.log").read_text(errors="replace"):
            log.info("port %d was taken meanwhile; trying another", port)
            continue
        break
    assert guest is not None
    t0 = time.monotonic()
    running = guest
    try:
        if launch.incoming:
            # The restored guest's sshd was running when it was saved: its banner is enough, and the
            # clock and CRNG refresh is the first command, before anything else runs.
            seconds = snapshot.resume(launch.qmp_socket, alive=lambda: _alive(running.pid, sdir), timeout=timeout)
            log.debug("snapshot read in %.1f s", seconds)
            wait_for_ssh(guest, timeout=timeout, banner_only=True)
            snapshot.refresh(guest)
        else:
            wait_for_ssh(guest, timeout=timeout)
    except BaseException:
        _terminate(guest.pid, sdir)
        (sdir / "state.json").unlink(missing_ok=True)
        raise
    guest.boot_seconds = time.monotonic() - t0
    return guest


def _inventory_host(guest: Guest) -> ansible_inventory.Host:
    return ansible_inventory.Host(
        name=guest.name,
        port=guest.ssh_port,
        user=guest.user,
        private_key=Path(guest.private_key),
        profile=guest.profile,
        cpu=guest.cpu,
        board=guest.board,
    )


# ---------------------------------------------------------------- stop


def _wait_exit(pid: int, sdir: Path, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not _alive(pid, sdir):
            return True
        time.sleep(0.2)
    return not _alive(pid, sdir)


def stop(name: str, *, timeout: float = 120, keep_disk: bool = False) -> Stopped:
    """Shut the guest down: poweroff over SSH, else ACPI power button, else kill.

    clean is True when the guest powered itself off (its kernel printed the power-down
    line after unmounting), so its filesystems are clean.
    """
    t0 = time.monotonic()
    sdir = state_dir(name)
    guest = _load(name)
    if guest is None:
        return Stopped(name, was_running=False, clean=True, seconds=0.0)
    clean = False
    if _alive(guest.pid, sdir):
        try:
            client = connect(guest.ssh_port, guest.user, Path(guest.private_key), timeout=15)
            try:
                client.exec_command("sudo systemctl poweroff", timeout=15)
            finally:
                client.close()
        except (OSError, paramiko.SSHException) as e:
            log.info("poweroff over SSH failed (%s); trying the ACPI power button", e)
        exited = _wait_exit(guest.pid, sdir, timeout * 0.75)
        if not exited:
            with contextlib.suppress(OSError, QMPError), QMP(sdir / "qmp.sock", timeout=5) as q:
                q.execute("system_powerdown")
            exited = _wait_exit(guest.pid, sdir, timeout * 0.25)
        if exited:
            clean = POWER_DOWN_MARK in Path(guest.serial_log).read_text(errors="replace")
        else:
            log.warning("%s did not power off within %.0f s; killing qemu", name, timeout)
            _terminate(guest.pid, sdir)
        was_running = True
    else:
        was_running = False
        clean = True
    if guest.inventory:
        ansible_inventory.remove_host(Path(guest.inventory), name)
    (sdir / "state.json").unlink(missing_ok=True)
    if guest.overlay and not keep_disk:
        Path(guest.overlay).unlink(missing_ok=True)
    return Stopped(name, was_running=was_running, clean=clean, seconds=time.monotonic() - t0)


def reboot(name: str, *, timeout: float = 300) -> Guest:
    """Power the guest off cleanly and boot it again from the same disk, ports and settings.

    The emulated boards run with -no-reboot (a guest reboot ends qemu rather than looping on
    a broken kernel), so this is how to prove that what was provisioned comes up at boot.
    """
    guest = _load(name)
    if guest is None or not _alive(guest.pid, state_dir(name)):
        raise UsageError(f"guest {name} is not running: start it with `pibake emulate start --name {name}`")
    stopped = stop(name, keep_disk=True)
    if not stopped.clean:
        if guest.overlay:
            Path(guest.overlay).unlink(missing_ok=True)
        raise PibakeError(f"{name} did not power off cleanly; not booting it again (serial log {guest.serial_log})")
    return start(
        Path(guest.image),
        profile=guest.profile,
        cpu=guest.cpu,
        board=guest.board,
        name=name,
        persist=guest.overlay is None,
        memory_mb=guest.memory_mb,
        timeout=timeout,
        inventory=Path(guest.inventory) if guest.inventory else None,
        kernel=Path(guest.kernel) if guest.kernel else None,
        dtb=Path(guest.dtb) if guest.dtb else None,
        forward=tuple(int(gp) for gp in guest.forwards),
        cold=True,
        user=guest.user,
        _reuse=guest,
    )


# ---------------------------------------------------------------- interactive


def ssh(name: str, command: list[str]) -> int:
    guest = _load(name)
    if guest is None or not _alive(guest.pid, state_dir(name)):
        raise UsageError(f"guest {name} is not running: start it with `pibake emulate start --name {name}`")
    argv = [
        "ssh",
        "-i",
        guest.private_key,
        "-p",
        str(guest.ssh_port),
        *ansible_inventory.SSH_ARGS.split(),
        f"{guest.user}@127.0.0.1",
        *command,
    ]
    return subprocess.call(argv)


def run_foreground(
    image: Path,
    *,
    profile: str | None,
    cpu: str | None,
    name: str,
    persist: bool,
    board: str | None = None,
    kernel: Path | None = None,
    dtb: Path | None = None,
    forward: tuple[int, ...] | None = None,
    cold: bool = False,
    user: str = "pi",
) -> int:
    """Boot (or restore, unless COLD), say how to reach the guest as USER, and stop it cleanly on Ctrl-C or at
    poweroff."""
    guest = start(
        image,
        profile=profile,
        cpu=cpu,
        board=board,
        name=name,
        persist=persist,
        inventory=Path("inventories/qemu/hosts.yml"),
        kernel=kernel,
        dtb=dtb,
        forward=forward,
        cold=cold,
        user=user,
    )
    print(f"{name} is up: `pibake emulate ssh --name {name}` or ssh -p {guest.ssh_port} {guest.user}@127.0.0.1")
    for gp, hp in sorted(guest.forwards.items()):
        print(f"  guest port {gp}: 127.0.0.1:{hp}")
    print("Ctrl-C shuts it down cleanly.")
    try:
        while _alive(guest.pid, state_dir(name)):
            time.sleep(1)
    except KeyboardInterrupt:
        print("shutting down...")
    stopped = stop(name)
    print(f"{name}: {'stopped cleanly' if stopped.clean else 'killed'} ({stopped.seconds:.1f} s)")
    return 0 if stopped.clean else 1


def wait_for_ssh(guest: Guest, *, timeout: float, banner_only: bool = False) -> None:
    """Return once GUEST's sshd greets and (unless BANNER_ONLY) runs a command for the harness key.

    On a terminal a progress row says so with the time since qemu started and the serial console's last line;
    elsewhere a log line every 15 s. Raises PibakeError, quoting the serial console, when qemu exits or TIMEOUT
    seconds pass.
    """
    sdir = state_dir(guest.name)
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    with progress.step(f"{guest.name}: waiting for SSH on port {guest.ssh_port}", logger=log) as status:
        while True:
            if not _alive(guest.pid, sdir):
                qemu_log = (
                    (sdir / "qemu.log").read_text(errors="replace").strip() if (sdir / "qemu.log").exists() else ""
                )
                raise PibakeError(
                    f"qemu exited while {guest.name} was booting. {qemu_log}\nLast lines of the serial console:\n"
                    + serial_tail(guest.serial_log)
                )
            if ssh_banner(guest.ssh_port):
                if banner_only:
                    return
                try:
                    status_code, _ = ssh_run(guest, "true", timeout=30)
                    if status_code == 0:
                        return
                except (OSError, paramiko.SSHException) as e:
                    log.debug("ssh not ready: %s", e)
            now = time.monotonic()
            if now > deadline:
                raise PibakeError(
                    f"{guest.name} did not answer SSH within {timeout:.0f} s. Last lines of the serial console "
                    f"({guest.serial_log}):\n" + serial_tail(guest.serial_log)
                )
            if status.live:
                status.show(serial_last_line(guest.serial_log))
            elif now - last_report > 15:
                status.tick("waiting for SSH on port %d (%.0f s)", guest.ssh_port, time.time() - guest.started_at)
                last_report = now
            time.sleep(1)


def serial_last_line(path: Path | str, *, window: int = 4096) -> str:
    """The last line of the serial console with something on it (a booting kernel's, systemd's), or ""."""
    try:
        with Path(path).open("rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - window, 0))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1] if lines else ""
