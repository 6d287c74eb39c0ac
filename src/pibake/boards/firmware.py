"""A Raspberry Pi's boot partition per board: config.txt and cmdline.txt written and read, pure functions.

What each board's firmware loads (device trees, firmware files, default kernel, header UART) is
in the board table, plugins/module_utils/boards.py; boot_of() returns a board's row.

The Pi boots in two stages before Linux: the GPU's boot ROM loads bootcode.bin (on the
Pi 4 it lives in the EEPROM instead), which loads start*.elf and fixup*.dat; start.elf
reads config.txt, loads the kernel, the initramfs and the device tree it names (or
chooses), and passes cmdline.txt to the kernel. With ``upstream_kernel=1`` (Debian's
armmp kernel) the firmware looks for the mainline device tree names (bcm2837-rpi-3-b-plus.dtb);
without it, for Raspberry Pi OS's own (bcm2710-rpi-3-b-plus.dtb).

The Debian armhf bases are ARMv7: they are for the Pi 2, 3, 3B+, Zero 2 and 4 (32-bit), not
the ARMv6 Pi 1 and Zero, which need Raspberry Pi OS. A board is also refused by a base whose
kernel is older than the board's device tree (the board table's upstream_dtb_since): bullseye's
5.10 has no device tree for the Zero 2 W, bookworm's 6.1 and trixie's 6.12 have it.
"""

from __future__ import annotations

import re

from pibake import boards
from pibake.boards import Board
from pibake.errors import UsageError
from pibake.isa import Arch

# A line of config.txt that says which board pibake wrote it for (read back by `image check`).
BOARD_MARK = "# pibake board:"

# The emulated boards' serial line: QEMU's raspi2b, virt and vexpress all have a PL011 there.
QEMU_CONSOLE = "ttyAMA0"


def boot_of(board: str) -> Board:
    """BOARD's row of the board table, for what its firmware loads (upstream_dtb, firmware, default_kernel...).

    Unknown names raise UsageError with the list of known boards.
    """
    return boards.get(board)


def linux_series(version: str) -> tuple[int, int]:
    """(major, minor) of the first "X.Y" in VERSION: "6.1", "Linux 5.16", a kernel file name "vmlinuz-6.1.0-50-armmp".

    Raises UsageError when VERSION holds no such number.
    """
    found = re.search(r"(\d+)\.(\d+)", version)
    if found is None:
        raise UsageError(f"{version!r} names no Linux version (X.Y)")
    return int(found.group(1)), int(found.group(2))


def dtb_missing(board: Board, linux: str) -> bool:
    """Whether a kernel of the LINUX series (e.g. "6.1") lacks BOARD's mainline device tree (board.upstream_dtb).

    The board table records the first mainline Linux that has it (upstream_dtb_since) where that is later than
    5.10, the oldest kernel a Debian base ships (bullseye's); Debian's kernel packages ship the mainline device trees
    of their series (measured: bullseye's armmp 5.10.0-32 has no bcm2837-rpi-zero-2-w.dtb, bookworm's armmp
    6.1.0-50 and trixie's arm64 6.12.117 have it).
    """
    return board.upstream_dtb_since is not None and linux_series(board.upstream_dtb_since) > linux_series(linux)


def require_debian_board(name: str, *, linux: str, arch: str = "armhf") -> Board:
    """The board, if a Debian base of ARCH (armhf, arm64) whose kernel is LINUX (a series, "6.1", or a kernel's file
    name, vmlinuz-6.1.0-50-armmp) can boot it; else a UsageError saying what to use.

    Debian's armhf port is built for ARMv7 (Debian wiki, ArmHardFloatPort), its arm64 port for ARMv8-A (the
    boards with a 64-bit core in the table, Board.cpu64): debian_port_problem. The firmware needs the board's
    device tree from the kernel (dtb_missing: the board table's upstream_dtb_since against LINUX). The messages
    name bases and boards, not the options that choose them: `image build --base/--board` and pibake.toml's
    target.base and target.board both come here.
    """
    board = boards.get(name)
    problem = debian_port_problem(name, arch=arch, linux=linux)
    if problem is not None:
        raise UsageError(problem)
    if dtb_missing(board, linux):
        series = "{}.{}".format(*linux_series(linux))
        raise UsageError(
            f"board {name} ({board.model}) needs {board.upstream_dtb}, which this base's Linux {series} kernel "
            f"does not ship (it arrived in {board.upstream_dtb_since}): the firmware would find no device tree. "
            "Use a base with a newer kernel (debian-bookworm-armhf: Linux 6.1; debian-trixie-arm64: Linux 6.12) "
            "or Raspberry Pi OS for this board, or build this base for "
            + ", ".join(debian_boards(arch=arch, linux=linux))
        )
    return board


def debian_port_problem(name: str, *, linux: str, arch: str = "armhf") -> str | None:
    """Why board NAME's core cannot run Debian's ARCH port (armhf: ARMv7 and later; arm64: a 64-bit core), with what
    to use instead, or None if it can. LINUX (a series or a kernel's file name) picks the boards it suggests.

    The build refuses such a board (require_debian_board), and `image check` reports it for a boot partition
    whose kernel is Debian's.
    """
    board = boards.get(name)
    if arch == "arm64":
        if board.cpu64 is None:
            return (
                f"board {name} ({board.model}) has {boards.article(board.core)} {board.core}, which cannot run 64-bit "
                "(arm64) code: "
                + (
                    "use the 32-bit base (debian-bookworm-armhf) or Raspberry Pi OS armhf for it"
                    if board.isa.arch >= Arch.ARMV7
                    # ARMv6: Debian's armhf port cannot boot it either (the branch below).
                    else "only Raspberry Pi OS armhf runs on it"
                )
                + ", or build the arm64 base for "
                + ", ".join(debian_boards(arch="arm64", linux=linux))
            )
    elif board.isa.arch < Arch.ARMV7:
        return (
            f"board {name} ({board.model}) has an {board.core} (ARMv6): Debian's armhf port is built for ARMv7, "
            "so an image built from Debian cannot boot it. Use Raspberry Pi OS for this board "
            "(`pibake image fetch`, then `pibake image prepare`), or build for " + ", ".join(debian_boards(linux=linux))
        )
    return None


def debian_boards(*, linux: str, arch: str = "armhf") -> list[str]:
    """The boards an image built from a Debian base of ARCH (armhf, arm64) with a LINUX-series kernel boots."""
    if arch == "arm64":
        usable = [b for b in boards.BOARDS.values() if b.cpu64 is not None]
    else:
        usable = [b for b in boards.BOARDS.values() if b.isa.arch >= Arch.ARMV7]
    return [b.name for b in usable if not dtb_missing(b, linux)]


def kernel_cmdline(root: str, board: str) -> str:
    """cmdline.txt for BOARD, root= ROOT (e.g. PARTUUID=1234abcd-02).

    Consoles: tty1 (HDMI) and the board's header UART on the real Pi, and ttyAMA0 last so
    that /dev/console is the serial line QEMU logs. (On the Pi 3 and 4 ttyAMA0 is the
    Bluetooth UART: kernel messages go there too, harmless without Bluetooth firmware.)
    """
    serial = boot_of(board).serial_console
    consoles = ["console=tty1"]
    if serial != QEMU_CONSOLE:
        consoles.append(f"console={serial},115200")
    consoles.append(f"console={QEMU_CONSOLE},115200")
    return " ".join([*consoles, f"root={root}", "rootfstype=ext4", "fsck.repair=yes", "rootwait", "net.ifnames=0"])


def config_txt(board: str, *, kernel: str, initrd: str, arch: str = "armhf") -> str:
    """config.txt for Debian's kernel of ARCH (armmp on armhf, arm64) on BOARD, as raspi-firmware writes it.

    KERNEL is the kernel's file name (vmlinuz-6.1.0-50-armmp): its version is the one BOARD is checked against.
    Plus the board mark. ``arm_64bit=1`` makes the firmware start the cores in AArch64 (Raspberry Pi
    documentation, "config.txt": arm_64bit).
    """
    require_debian_board(board, arch=arch, linux=kernel)
    if arch == "arm64":
        bits = "# 64-bit kernel (Debian arm64): the firmware starts the cores in AArch64.\narm_64bit=1\n"
    else:
        bits = "# 32-bit kernel, even on a Pi 4 whose firmware would prefer a 64-bit one.\narm_64bit=0\n"
    flavour = "arm64" if arch == "arm64" else "armmp"
    return (
        f"# Written by pibake for the Debian {flavour} kernel, as Debian's raspi-firmware does.\n"
        f"{BOARD_MARK} {board}\n"
        f"{bits}"
        f"# Mainline device tree names (bcm2837-rpi-3-b-plus.dtb, ...), as the {flavour} kernel ships them.\n"
        "upstream_kernel=1\n"
        "# The header UART at a fixed clock, so the serial console works.\n"
        "enable_uart=1\n"
        f"kernel={kernel}\n"
        f"initramfs {initrd} followkernel\n"
    )


def recorded_board(config: str) -> str | None:
    """The board pibake wrote CONFIG (a config.txt) for, or None."""
    for line in config.splitlines():
        if line.startswith(BOARD_MARK):
            return line.removeprefix(BOARD_MARK).strip() or None
    return None


def parse_config_txt(text: str) -> dict[str, str]:
    """The settings of a Raspberry Pi config.txt that matter to a boot: kernel=, initramfs, device_tree=.

    Conditional sections other than [all] (e.g. [pi4]) are ignored: the emulator is no
    particular board model's firmware. Syntax as the Raspberry Pi documentation ("config.txt",
    "Conditional filters") describes it.
    """
    settings: dict[str, str] = {}
    active = True
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            active = line in ("[all]", "[any]")
            continue
        if not active:
            continue
        if line.startswith("initramfs "):
            settings["initramfs"] = line.split()[1]
        elif "=" in line:
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    return settings


# QEMU's Raspberry Pi machines and the board each models (QEMU's documentation, "Raspberry Pi boards").
QEMU_BOARDS = {"raspi2b": "pi2", "raspi3b": "pi3", "raspi4b": "pi4"}


def firmware_kernel(config: dict[str, str], board: Board) -> tuple[str, str]:
    """The kernel BOARD's firmware loads with CONFIG (parse_config_txt's settings), and why: (file name, reason).

    config.txt's kernel=; else, with arm_64bit=1, kernel8.img (the cores start in AArch64); else the
    board's default (the board table: kernel7.img on the Pi 2 and 3, kernel7l.img on the Pi 4, the
    names Raspberry Pi OS ships). Source: Raspberry Pi documentation, "config.txt": kernel, arm_64bit.
    """
    if config.get("kernel"):
        return config["kernel"], "config.txt's kernel="
    if config.get("arm_64bit", "0").strip() == "1":
        return "kernel8.img", "the firmware's 64-bit default (arm_64bit=1, no kernel=)"
    return board.default_kernel, f"the {board.name}'s firmware default (no kernel= in config.txt)"


def firmware_initramfs(config: dict[str, str], kernel: str) -> tuple[str, str, bool] | None:
    """The initramfs the firmware loads with CONFIG beside KERNEL (firmware_kernel's name), or None for none:
    (file name, reason, whether it must be there).

    config.txt's ``initramfs`` line (required: the firmware stops without it); else, with auto_initramfs=1
    (Raspberry Pi OS's config.txt since bookworm), the name the kernel selection gives: kernel8.img ->
    initramfs8, kernel7l.img -> initramfs7l, kernel_2712.img -> initramfs_2712, loaded when it is there.
    Source: Raspberry Pi documentation, "config.txt": initramfs, auto_initramfs.
    """
    if config.get("initramfs"):
        return config["initramfs"].split()[0], "config.txt's initramfs line", True
    name = kernel.lower()
    if config.get("auto_initramfs", "0").strip() == "1" and name.startswith("kernel") and name.endswith(".img"):
        return "initramfs" + kernel[len("kernel") : -len(".img")], f"auto_initramfs=1 beside {kernel}", False
    return None


def firmware_dtb(config: dict[str, str], board: Board) -> tuple[str, str]:
    """The device tree BOARD's firmware loads with CONFIG, and why: (file name, reason).

    config.txt's device_tree=; else with upstream_kernel=1 the board's mainline name (Debian's
    kernels, bcm2837-rpi-3-b.dtb), else Raspberry Pi's own (Raspberry Pi OS, bcm2710-rpi-3-b.dtb).
    Source: Raspberry Pi documentation, "config.txt": device_tree, upstream_kernel.
    """
    if config.get("device_tree"):
        return config["device_tree"], "config.txt's device_tree="
    if config.get("upstream_kernel", "0").strip() == "1":
        return board.upstream_dtb, f"the {board.name}'s device tree under upstream_kernel=1"
    return board.downstream_dtb, f"the {board.name}'s device tree (Raspberry Pi kernel names)"
