"""Machine profiles (data files in qemu/) and the qemu-system-arm / qemu-system-aarch64 command line they give."""

from __future__ import annotations

import functools
import logging
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pibake import resources
from pibake.errors import PibakeError, ToolMissing, UsageError
from pibake.util.proc import run

log = logging.getLogger(__name__)

PROFILE_DIR = resources.PROFILES

DISK_BUSES = ("virtio", "sd")
# Debian architecture of the images a profile boots -> the QEMU system emulator that runs them.
QEMU_SYSTEM = {"armhf": "qemu-system-arm", "arm64": "qemu-system-aarch64"}
NET_MODELS = ("virtio", "nic", "usb-net")
# Machines that only newer QEMUs have, with the release that added them and where Debian bookworm gets one (QEMU's
# changelog: raspi4b, the BCM2711, arrived in 9.0; bookworm has 7.2, bookworm-backports 10.0).
MACHINE_SINCE = {"raspi4b": ("9.0", "qemu-system-arm from bookworm-backports (QEMU 10.0)")}
# Machines a QEMU has but that were seen not to boot pibake's images, up to the newest QEMU release tried (a newer one
# is let through with a warning): (release, what happened). Measured here, 2026-11-30, QEMU 10.0.2 from
# bookworm-backports, the trixie arm64 base's kernel (6.12) with its bcm2711-rpi-4-b.dtb.
MACHINE_BROKEN = {
    "raspi4b": (
        (10, 0, 2),
        "Debian's arm64 kernel panics 4 s into its boot (in brcmstb_l2_intc_of_init: QEMU's BCM2711 model has no "
        "L2 interrupt controller, which the Pi 4's device tree names); QEMU's own list of what raspi4b lacks "
        "(GENET Ethernet, PCIe) leaves only USB networking besides",
    )
}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    machine: str
    cpu: str
    cpus: dict[str, tuple[str, ...]]
    smp: int
    memory_mb: int
    max_memory_mb: int
    disk_bus: str
    guest_device: str
    net_model: str
    guest_interface: str
    console: str
    # Device tree file on the image's boot partition; None: the machine builds its own (virt).
    dtb: str | None = None
    # The SoC decides CPU, cores and RAM (raspi2b): qemu gets no -cpu/-smp/-m.
    fixed_soc: bool = False
    # The images it boots: armhf (32-bit kernels, qemu-system-arm) or arm64 (qemu-system-aarch64).
    arch: str = "armhf"
    # A guest on this machine is saved and restored (snapshot starts). Only where a restore was seen to
    # work: a vexpress-a9 guest restored on QEMU 7.2 never answers SSH again.
    snapshot: bool = False

    @property
    def needs_power_of_two(self) -> bool:
        """QEMU's SD card model only takes images whose size is a power of two."""
        return self.disk_bus == "sd"

    def features(self, cpu: str | None = None) -> tuple[str, ...]:
        return self.cpus[self.resolve_cpu(cpu)]

    def resolve_cpu(self, cpu: str | None) -> str:
        cpu = cpu or self.cpu
        if cpu not in self.cpus:
            raise UsageError(
                f"profile {self.name} cannot emulate CPU {cpu!r}; choose one of: {', '.join(sorted(self.cpus))}"
            )
        return cpu


def profile_dir() -> Path:
    if PROFILE_DIR.is_dir():
        return PROFILE_DIR
    raise PibakeError(f"no machine profiles found: no directory {PROFILE_DIR}")


def available() -> list[str]:
    return sorted(p.stem for p in profile_dir().glob("*.toml"))


def load(name: str) -> Profile:
    path = profile_dir() / f"{name}.toml"
    if not path.is_file():
        raise UsageError(f"unknown machine profile {name!r}; known profiles: {', '.join(available())}")
    return parse(tomllib.loads(path.read_text()), source=str(path))


def parse(data: dict[str, object], *, source: str = "<profile>") -> Profile:
    try:
        res = data["resources"]
        disk = data["disk"]
        net = data["network"]
        boot = data["boot"]
        cpus = data["cpus"]
        assert isinstance(res, dict) and isinstance(disk, dict) and isinstance(net, dict)
        assert isinstance(boot, dict) and isinstance(cpus, dict)
        prof = Profile(
            name=str(data["name"]),
            description=str(data.get("description", "")),
            machine=str(data["machine"]),
            cpu=str(data["cpu"]),
            cpus={str(k): tuple(v) for k, v in cpus.items()},
            smp=int(res["smp"]),
            memory_mb=int(res["memory_mb"]),
            max_memory_mb=int(res["max_memory_mb"]),
            disk_bus=str(disk["bus"]),
            guest_device=str(disk["guest_device"]),
            net_model=str(net["model"]),
            guest_interface=str(net["guest_interface"]),
            console=str(boot["console"]),
            dtb=str(boot["dtb"]) if "dtb" in boot else None,
            fixed_soc=bool(data.get("fixed_soc", False)),
            snapshot=bool(data.get("snapshot", False)),
            arch=str(data.get("arch", "armhf")),
        )
    except (KeyError, AssertionError, TypeError, ValueError) as e:
        raise PibakeError(f"{source}: malformed machine profile ({e!r})") from e
    if prof.arch not in QEMU_SYSTEM:
        raise PibakeError(f"{source}: arch must be one of {tuple(QEMU_SYSTEM)}, not {prof.arch!r}")
    if prof.disk_bus not in DISK_BUSES:
        raise PibakeError(f"{source}: disk bus must be one of {DISK_BUSES}, not {prof.disk_bus!r}")
    if prof.net_model not in NET_MODELS:
        raise PibakeError(f"{source}: network model must be one of {NET_MODELS}, not {prof.net_model!r}")
    prof.resolve_cpu(None)
    return prof


@dataclass(frozen=True)
class Launch:
    """Everything about one boot that is not in the profile."""

    kernel: Path
    initrd: Path | None
    cmdline: str
    drive: Path
    drive_format: str  # raw or qcow2
    ssh_port: int
    serial_log: Path
    qmp_socket: Path
    pidfile: Path
    cpu: str | None = None
    memory_mb: int | None = None
    dtb: Path | None = None
    # (host port, guest port) pairs forwarded on 127.0.0.1 besides SSH.
    forwards: tuple[tuple[int, int], ...] = ()
    # Restore a saved guest from this migration URI (qemu -incoming) instead of booting.
    incoming: str | None = None


_qemu_versions: dict[str, str] = {}


def qemu_version(binary: str) -> str:
    """BINARY's ``-version`` first line (cached per process): part of a snapshot's key (a snapshot is only restored
    by the qemu that saved it), and the release check_machine compares. Raises ToolMissing when BINARY is not
    installed."""
    if binary not in _qemu_versions:
        _qemu_versions[binary] = run([binary, "-version"]).splitlines()[0].strip()
    return _qemu_versions[binary]


@functools.cache
def qemu_machines(binary: str) -> frozenset[str]:
    """The machine names BINARY's ``-machine help`` lists (asked once a process). Raises ToolMissing when BINARY is
    not installed."""
    listing = run([binary, "-machine", "help"])
    return frozenset(m.group(1) for m in re.finditer(r"^(\S+)\s", listing, re.MULTILINE)) - {"Supported"}


def qemu_release(version: str) -> tuple[int, int, int] | None:
    """(major, minor, micro) from qemu's ``--version`` line ("QEMU emulator version 10.0.2 (Debian ...)"); None when
    the line says no version."""
    m = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", version)
    return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else None


def check_machine(profile: Profile) -> None:
    """Refuse PROFILE when the installed qemu-system-arm/aarch64 lacks its machine (raspi4b before QEMU 9.0), or has
    it in a release seen not to boot pibake's images (MACHINE_BROKEN: raspi4b up to QEMU 10.0.2).

    Raises ToolMissing naming the QEMU release that has the machine and where to get it (MACHINE_SINCE), what went
    wrong with the machine and what to use instead (MACHINE_BROKEN), or the missing emulator itself.
    """
    binary = qemu_binary(profile)
    version = qemu_version(binary)
    if profile.machine in qemu_machines(binary):
        broken = MACHINE_BROKEN.get(profile.machine)
        release = qemu_release(version)
        if broken is None or release is None:
            return
        upto, what = broken
        if release > upto:
            log.warning(
                "profile %s: QEMU %s is newer than the last one measured with its %s machine (%s), where %s",
                profile.name, ".".join(map(str, release)), profile.machine, ".".join(map(str, upto)), what,
            )  # fmt: skip
            return
        raise ToolMissing(
            f"profile {profile.name} cannot boot pibake's images on {binary} here ({version}): {what} (measured on "
            f"QEMU {'.'.join(map(str, upto))}). Emulate the board's core on virt64 instead (--board pi4: Cortex-A72)"
        )
    since, where = MACHINE_SINCE.get(profile.machine, ("a later release", "a newer QEMU"))
    raise ToolMissing(
        f"profile {profile.name} runs QEMU's {profile.machine} machine, which {binary} here ({version}) does not "
        f"have: it needs QEMU {since} or later; on Debian bookworm, install {where}"
    )


def qemu_binary(profile: Profile) -> str:
    """The qemu system emulator that runs PROFILE's machine: qemu-system-arm, or qemu-system-aarch64 for arm64."""
    return QEMU_SYSTEM[profile.arch]


def qemu_command(profile: Profile, launch: Launch) -> list[str]:
    cpu = profile.resolve_cpu(launch.cpu)
    memory = launch.memory_mb or profile.memory_mb
    if not 64 <= memory <= profile.max_memory_mb:
        raise UsageError(f"profile {profile.name} takes 64 to {profile.max_memory_mb} MiB of RAM, not {memory}")
    if profile.dtb and launch.dtb is None:
        raise UsageError(f"profile {profile.name} boots with the device tree {profile.dtb}, and none was given")
    hostfwd = ",".join(
        f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in ((launch.ssh_port, 22), *launch.forwards)
    )
    argv = [qemu_binary(profile), "-M", profile.machine]
    if profile.fixed_soc:
        if launch.cpu not in (None, profile.cpu) or launch.memory_mb not in (None, profile.memory_mb):
            raise UsageError(f"profile {profile.name} emulates a fixed SoC: its CPU and RAM cannot be changed")
        argv += ["-m", str(profile.memory_mb)]
    else:
        argv += ["-cpu", cpu, "-smp", str(profile.smp), "-m", str(memory)]
    if launch.dtb is not None:
        argv += ["-dtb", str(launch.dtb)]
    argv += ["-kernel", str(launch.kernel)]
    if launch.initrd is not None:
        argv += ["-initrd", str(launch.initrd)]
    argv += [
        "-append", launch.cmdline,
        "-display", "none",
        "-serial", f"file:{launch.serial_log}",
        "-monitor", "none",
        "-qmp", f"unix:{launch.qmp_socket},server=on,wait=off",
        "-pidfile", str(launch.pidfile),
        # A guest reboot ends qemu instead of looping; poweroff ends it too.
        "-no-reboot",
    ]  # fmt: skip
    if launch.incoming:
        argv += ["-incoming", launch.incoming]
    if profile.disk_bus == "virtio":
        drive = f"file={launch.drive},if=none,format={launch.drive_format},id=hd0"
        argv += ["-drive", drive, "-device", "virtio-blk-device,drive=hd0"]
    else:
        argv += ["-drive", f"file={launch.drive},if=sd,format={launch.drive_format}"]
    if profile.net_model == "virtio":
        argv += ["-netdev", f"user,id=n0,{hostfwd}", "-device", "virtio-net-device,netdev=n0"]
    elif profile.net_model == "nic":
        argv += ["-nic", f"user,{hostfwd}"]
    else:
        argv += ["-netdev", f"user,id=n0,{hostfwd}", "-device", "usb-net,netdev=n0"]
    return argv
