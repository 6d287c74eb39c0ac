"""Command line: parses arguments and calls one function per subcommand, nothing more."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pibake import __version__, boards
from pibake.errors import PibakeError

if TYPE_CHECKING:
    from pibake.emulate.guest import Guest

log = logging.getLogger("pibake")

DEFAULT_IMAGE = Path("build/pibake-bullseye.img")


def _cmd_image_build(a: argparse.Namespace) -> int:
    from pibake.image import build as image

    spec = image.default_spec(base=a.base, size_mb=a.size, mirror=a.mirror, board=a.board)
    built = image.build_image(spec, output=a.output, rebuild=a.rebuild)
    print(f"{built.path}  sha256 {built.sha256}  ({'cached, ' if built.cached else ''}{built.seconds:.1f} s)")
    return 0


def _emulation(a: argparse.Namespace) -> tuple[str, str | None]:

    return boards.emulation(boards.get(a.board), profile=a.profile, cpu=a.cpu)


def _cmd_image_fetch(a: argparse.Namespace) -> int:
    from pibake.image import fetch

    if a.list:
        for name, rel in sorted(fetch.CATALOGUE.items()):
            aliases = [k for k, v in fetch.ALIASES.items() if v == name]
            default = " (default)" if fetch.DEFAULT_RELEASE in aliases else ""
            print(f"{name}{default}{'  alias ' + ', '.join(aliases) if aliases else ''}\n  {rel.description}")
            print(f"  {rel.url}\n  sha256 {rel.sha256 or 'unknown: needs --sha256'}")
        return 0
    src = fetch.resolve(release=a.release, url=a.url, sha256=a.sha256, insecure_no_verify=a.insecure_no_verify)
    output = a.output or Path("build") / fetch.image_name(src.filename)
    got = fetch.fetch(
        release=a.release,
        url=a.url,
        sha256=a.sha256,
        insecure_no_verify=a.insecure_no_verify,
        output=output,
        retries=a.retries,
    )
    state = "cached" if got.cached else ("verified" if got.verified else "NOT VERIFIED")
    print(f"{got.path}  sha256 {got.image_sha256}  (archive sha256 {got.archive_sha256}, {state}, {got.seconds:.1f} s)")
    return 0


def _cmd_image_prepare(a: argparse.Namespace) -> int:
    from pibake.emulate import profiles, sshkey
    from pibake.image import prepare

    power_of_two, console = a.grow_to_power_of_two, "ttyAMA0"
    if a.profile:
        prof = profiles.load(a.profile)
        power_of_two = power_of_two or prof.needs_power_of_two
        console = prof.console
    if a.ssh_key:
        try:
            key = a.ssh_key.read_text().strip()
        except OSError as e:
            raise PibakeError(f"cannot read the SSH public key {a.ssh_key}: {e.strerror}") from e
    else:
        key = sshkey.ensure_keypair().public_key
    res = prepare.prepare(
        a.image,
        output=a.output,
        grow_mb=a.grow,
        power_of_two=power_of_two,
        user=a.user,
        password_hash=a.password_hash,
        ssh_pubkey=key,
        hostname=a.hostname,
        emulation_tweaks=not a.no_emulation_tweaks,
        console=console,
    )
    mib = 1 << 20
    print(f"{res.path}: {res.os}, {res.size_before // mib} -> {res.size // mib} MiB ({res.seconds:.1f} s)")
    for change in res.changes:
        print(f"  {change}")
    return 0


def _cmd_image_check(a: argparse.Namespace) -> int:
    from pibake.image import check as bootcheck

    res = bootcheck.check_boot(a.image, board=a.board)
    print(f"{res.image}: boot partition ready for {res.board}")
    print(f"  kernel {res.kernel}, initramfs {res.initrd or '(none)'}, device tree {res.dtb}, root={res.root}")
    return 0


def _cmd_image_finalize(a: argparse.Namespace) -> int:
    from pibake.image import finalize

    res = finalize.finalize(a.image, write_bmap=not a.no_bmap, manifest=a.manifest, board=a.board)
    print(f"{res.path}  sha256 {res.sha256}  ({res.seconds:.1f} s)")
    if res.undone:
        print(f"  undone: {', '.join(res.undone)}")
    if res.shrunk_to:
        print(f"  size for the card: {res.shrunk_to // (1 << 20)} MiB")
    for f in (res.sha256_file, res.bmap_file, res.manifest_file):
        if f is not None:
            print(f"  {f}")
    return 0


def _cmd_emulate_start(a: argparse.Namespace) -> int:
    from pibake.emulate import guest as emulator

    profile, cpu = _emulation(a)
    guest = emulator.start(
        a.image,
        profile=profile,
        cpu=cpu,
        board=a.board,
        name=a.name,
        persist=a.persist,
        memory_mb=a.memory,
        timeout=a.timeout,
        inventory=None if a.no_inventory else a.inventory,
        kernel=a.kernel,
        dtb=a.dtb,
        forward=_forwards(a),
    )
    _print_guest(guest)
    return 0


def _forwards(a: argparse.Namespace) -> tuple[int, ...]:
    from pibake.emulate import guest as emulator

    return emulator.DEFAULT_FORWARDS if a.forward is None else tuple(a.forward)


def _print_guest(guest: Guest) -> None:
    print(f"{guest.name}: ssh -p {guest.ssh_port} {guest.user}@127.0.0.1 (booted in {guest.boot_seconds:.1f} s)")
    for gp, hp in sorted(guest.forwards.items()):
        print(f"  guest port {gp}: 127.0.0.1:{hp}")


def _cmd_emulate_reboot(a: argparse.Namespace) -> int:
    from pibake.emulate import guest as emulator

    _print_guest(emulator.reboot(a.name, timeout=a.timeout))
    return 0


def _cmd_emulate_stop(a: argparse.Namespace) -> int:
    from pibake.emulate import guest as emulator

    stopped = emulator.stop(a.name, timeout=a.timeout)
    print(f"{a.name}: {'stopped cleanly' if stopped.clean else 'killed after timeout'} in {stopped.seconds:.1f} s")
    return 0 if stopped.clean else 1


def _cmd_emulate_status(a: argparse.Namespace) -> int:
    from pibake.emulate import guest as emulator

    st = emulator.status(a.name)
    print(json.dumps(st.as_dict(), indent=2, sort_keys=True) if a.json else st.describe())
    return 0 if st.running else 3


def _cmd_emulate_ssh(a: argparse.Namespace) -> int:
    from pibake.emulate import guest as emulator

    return emulator.ssh(a.name, a.command)


def _cmd_emulate_run(a: argparse.Namespace) -> int:
    from pibake.emulate import guest as emulator

    profile, cpu = _emulation(a)
    return emulator.run_foreground(
        a.image,
        profile=profile,
        cpu=cpu,
        board=a.board,
        name=a.name,
        persist=a.persist,
        kernel=a.kernel,
        dtb=a.dtb,
        forward=_forwards(a),
    )


def _cmd_demo(a: argparse.Namespace) -> int:
    from pibake import demo

    res = demo.demo(project=a.project, board=a.board, profile=a.profile, cpu=a.cpu, output=a.output)
    print("\nPredictions of the demo model, run on the emulated Pi (predict.py, then the service's POST /predict):")
    served = {str(p["image"]): p for p in res.served}
    for p in res.predictions:
        s = served.get(str(p["image"]), {})
        print(
            f"  {p['image']:<24} {p['label']:<12} {p['probability']:.4f}"
            + (f"   service: {s['label']} {s['probability']:.4f} (model version {s.get('version')})" if s else "")
        )
    print(f"\nFinished image: {res.image}\n  sha256 {res.sha256}  ({res.image.name}.sha256)")
    print(f"  manifest {res.manifest}" + (f", bmap {res.bmap}" if res.bmap else ""))
    print("  " + ", ".join(f"{k} {v:.0f} s" for k, v in res.timings.items()))
    return 0


def _cmd_preflight(a: argparse.Namespace) -> int:
    from pibake import preflight

    report = preflight.preflight(a.paths, board=a.board, profile=a.profile, cpu=a.cpu)
    print(report.describe())
    for error in report.errors():
        print(f"pibake: error: {error}", file=sys.stderr)
    return 0 if report.ok else 1


def _cmd_kernel_build(a: argparse.Namespace) -> int:
    from pibake import kernel

    built = kernel.build(a.profile, provider=a.provider, buildroot_sha256=a.buildroot_sha256)
    print(f"kernel {built.kernel}")
    if built.dtb:
        print(f"dtb    {built.dtb}")
    print(f"config {built.config}  ({'cached, ' if built.cached else ''}{built.seconds:.0f} s)")
    print(
        f"boot it: pibake emulate start --profile {a.profile} --kernel {built.kernel}"
        + (f" --dtb {built.dtb}" if built.dtb else "")
    )
    return 0


def _ask(prompt: str) -> str:
    """The flash confirmation: the prompt on stderr, the answer from stdin (so `echo sdb | pibake flash` works)."""
    print(prompt, end="", file=sys.stderr, flush=True)
    return sys.stdin.readline()


def _cmd_flash(a: argparse.Namespace) -> int:
    from pibake.flash import writer as flash

    res = flash.flash(
        a.image,
        a.device,
        bmap=a.bmap,
        full=a.no_bmap,
        to_file=a.to_file,
        unmount=a.unmount,
        allow_non_removable=a.allow_non_removable,
        large_device_threshold=a.large_device_gb * 1e9,
        assume_yes=a.yes,
        verify=not a.no_verify,
        eject=not a.no_eject,
        confirm=_ask,
    )
    print(res.describe())
    return 0


def _cmd_bench(a: argparse.Namespace) -> int:
    from pibake.bench import run as bench

    res = bench.run_bench(
        a.project,
        output_dir=a.output_dir,
        repeat=a.repeat,
        steps=a.steps,
        profile_names=a.profiles,
        quick=a.quick,
        cold_rootfs=a.cold_rootfs,
        flash_size_mib=a.flash_size_mib,
    )
    print(res.table)
    print(f"\n{res.json_path}\n{res.png_path}\n{res.table_path}")
    return 0


def _add_guest_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default="pibake", help="guest name; its state lives in the cache (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pibake",
        description="Bake a Raspberry Pi image that carries an ML model, prove it in QEMU, burn it.",
    )
    parser.add_argument("--version", action="version", version=f"pibake {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command run (debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p_image = sub.add_parser("image", help="build base images")
    image_sub = p_image.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    p = image_sub.add_parser(
        "build",
        help="build a Raspberry-Pi-OS-shaped image from Debian armhf packages (needs root for debootstrap)",
        description="Debootstrap Debian armhf through qemu-user, add the pi user with the harness's SSH key, "
        "and assemble an MBR image (FAT32 bootfs + ext4 rootfs) without loop mounts. "
        "Cached under a hash of the recipe: a second build with the same recipe takes seconds.",
    )
    p.add_argument("--base", default="debian-bullseye", help="base system (default: %(default)s)")
    p.add_argument("--size", type=int, default=2048, metavar="MIB", help="image size in MiB (default: %(default)s)")
    p.add_argument(
        "--mirror", default=None, help="Debian mirror URL (default: $PIBAKE_DEBIAN_MIRROR or debootstrap's default)"
    )
    p.add_argument(
        "-o", "--output", type=Path, default=DEFAULT_IMAGE, help="where to copy the image (default: %(default)s)"
    )
    p.add_argument("--rebuild", action="store_true", help="ignore a cached image (the rootfs cache is kept)")
    p.add_argument(
        "--board",
        default=boards.DEFAULT_BOARD,
        choices=boards.names(),
        help="board config.txt and cmdline.txt are written for; Debian armhf is ARMv7, so the ARMv6 pi1 and "
        "pi-zero are refused (they need Raspberry Pi OS) (default: %(default)s)",
    )
    p.set_defaults(func=_cmd_image_build)

    p = image_sub.add_parser(
        "check",
        help="check an image's boot partition for a board: firmware, kernel, initramfs, device tree, root=",
        description="Reads the FAT partition with mtools (no mounts): the board's GPU firmware files are there, "
        "config.txt's kernel= and initramfs name files that exist, the board's device tree is there and "
        "cmdline.txt's root= names the root partition. Lists every problem found. This is the firmware stage "
        "that QEMU does not emulate.",
    )
    p.add_argument("image", type=Path, help="raw image")
    p.add_argument(
        "--board",
        default=None,
        choices=boards.names(),
        help="board to check for (default: the one pibake recorded in config.txt)",
    )
    p.set_defaults(func=_cmd_image_check)

    p = image_sub.add_parser(
        "fetch",
        help="download a Raspberry Pi OS Lite image, check its sha256, decompress it (cached by checksum)",
        description="Download a release from the catalogue (default: the Legacy bullseye Lite armhf release) or "
        "any URL with its sha256. Resumes an interrupted download, verifies the archive before anything is "
        "cached, decompresses .xz, .gz and .zip, and copies the image to OUTPUT with OUTPUT.sha256.",
    )
    p.add_argument("--release", default=None, help="catalogue release or alias (see --list)")
    p.add_argument("--url", default=None, help="download this URL instead of a catalogue release (needs --sha256)")
    p.add_argument("--sha256", default=None, metavar="HEX", help="the archive's published sha256")
    p.add_argument(
        "--insecure-no-verify", action="store_true", help="take a URL without a sha256 (the digest is only reported)"
    )
    p.add_argument("-o", "--output", type=Path, default=None, help="image file to write (default: build/NAME.img)")
    p.add_argument(
        "--retries", type=int, default=3, help="resume a cut download this many times (default: %(default)s)"
    )
    p.add_argument("--list", action="store_true", help="list the catalogue and exit")
    p.set_defaults(func=_cmd_image_fetch)

    p = image_sub.add_parser(
        "prepare",
        help="grow an image, enable SSH, add the user, key and hostname, apply emulation-only tweaks (no root)",
        description="Works on IMAGE in place, or on a copy with -o. Raspberry Pi OS gets boot:/ssh and "
        "boot:/userconf.txt (its first boot renames the uid-1000 user); the Debian-built base gets the "
        "user in its account files. Emulation-only tweaks (ld.so.preload, cmdline.txt, the power-of-two "
        "size of an SD-card profile) are recorded in the image so that `finalize` undoes exactly those.",
    )
    p.add_argument("image", type=Path, help="raw image (Raspberry Pi OS or the Debian-built base)")
    p.add_argument("-o", "--output", type=Path, default=None, help="prepare a copy here instead of IMAGE itself")
    p.add_argument(
        "--grow", type=int, default=0, metavar="MIB", help="add this much to the image and its root filesystem"
    )
    p.add_argument(
        "--grow-to-power-of-two",
        action="store_true",
        help="also round the size up to a power of two, as QEMU's SD card needs (undone by finalize)",
    )
    p.add_argument(
        "--profile", default=None, help="machine profile to prepare for (an SD-card profile implies the power of two)"
    )
    p.add_argument("--user", default="pi", help="login user (default: %(default)s)")
    p.add_argument(
        "--password-hash",
        default=None,
        metavar="HASH",
        help="crypt(3) hash for the user, e.g. from `openssl passwd -6` (default: none: SSH keys only)",
    )
    p.add_argument(
        "--ssh-key", type=Path, default=None, metavar="PUBFILE", help="public key to install (default: the harness's)"
    )
    p.add_argument("--hostname", default=None, help="hostname (default: keep the image's)")
    p.add_argument("--no-emulation-tweaks", action="store_true", help="prepare for a real card only")
    p.set_defaults(func=_cmd_image_prepare)

    p = image_sub.add_parser(
        "finalize",
        help="undo the emulation tweaks, fsck, write IMAGE.sha256, IMAGE.bmap and IMAGE.manifest.json",
        description="Puts back exactly what `prepare` changed for emulation, shrinks an image grown to a power of "
        "two back to the size asked for, checks both filesystems, and describes the result: the base image's "
        "digest, Debian packages, Python distributions and the model's files, with versions and digests.",
    )
    p.add_argument("image", type=Path, help="prepared (and provisioned) raw image")
    p.add_argument("--manifest", type=Path, default=None, help="manifest path (default: IMAGE.manifest.json)")
    p.add_argument("--no-bmap", action="store_true", help="do not write IMAGE.bmap")
    p.add_argument(
        "--board",
        default=None,
        choices=boards.names(),
        help="check the boot partition for this board (default: the one recorded in config.txt; "
        "images without one, such as Raspberry Pi OS, are not checked)",
    )
    p.set_defaults(func=_cmd_image_finalize)

    p_kernel = sub.add_parser("kernel", help="build no-initrd kernels for the emulated boards")
    kernel_sub = p_kernel.add_subparsers(dest="kernel_command", required=True, metavar="ACTION")
    p = kernel_sub.add_parser(
        "build",
        help="build zImage (and the board's DTB) with everything built in, so no initrd is needed",
        description="Build the kernel for a machine profile from the board defconfig plus "
        "buildroot/board/pibake/linux.fragment. --provider buildroot downloads the Buildroot release pinned in "
        "buildroot/buildroot.lock (sha256-checked) and builds with the BR2_EXTERNAL tree in buildroot/; "
        "--provider debian-source cross-builds Debian's linux-source package with gcc-arm-linux-gnueabihf "
        "(`make kernel-deps` installs both). Cached under a hash of versions, defconfig and fragment.",
    )
    p.add_argument("--profile", default="virt", help="vexpress-a9, vexpress-a15 or virt (default: %(default)s)")
    p.add_argument(
        "--provider", default="debian-source", choices=("debian-source", "buildroot"), help="(default: %(default)s)"
    )
    p.add_argument(
        "--buildroot-sha256",
        default=None,
        metavar="HEX",
        help="sha256 of the Buildroot tarball, if the lock file has none",
    )
    p.set_defaults(func=_cmd_kernel_build)

    p_emu = sub.add_parser("emulate", help="boot an image under qemu-system-arm with SSH forwarded")
    emu_sub = p_emu.add_subparsers(dest="emulate_command", required=True, metavar="ACTION")
    for action, help_text in (
        ("start", "boot the image in the background, wait for SSH, write the Ansible inventory"),
        ("run", "boot the image in the foreground until Ctrl-C, then shut it down cleanly"),
    ):
        p = emu_sub.add_parser(action, help=help_text, description=help_text)
        p.add_argument("image", nargs="?", type=Path, default=DEFAULT_IMAGE, help="raw image (default: %(default)s)")
        p.add_argument(
            "--board",
            default="pi3b-plus",
            help="target board: picks the profile and CPU that emulate it (default: %(default)s)",
        )
        p.add_argument("--profile", default=None, help="machine profile from qemu/ (default: the board's)")
        p.add_argument("--cpu", default=None, help="CPU model, for profiles that let you choose (default: the board's)")
        p.add_argument(
            "--persist", action="store_true", help="write into the image itself instead of a copy-on-write overlay"
        )
        p.add_argument(
            "--kernel",
            type=Path,
            default=None,
            help="boot this kernel (no initrd) instead of the image's own, e.g. from `pibake kernel build`",
        )
        p.add_argument(
            "--dtb", type=Path, default=None, help="device tree instead of the one on the image's boot partition"
        )
        p.add_argument(
            "--forward",
            type=int,
            action="append",
            default=None,
            metavar="PORT",
            help="forward the guest's TCP PORT to a free port on 127.0.0.1 (repeatable; `emulate status` shows "
            "where; default: 8000, the inference service)",
        )
        _add_guest_options(p)
        if action == "start":
            p.add_argument("--memory", type=int, default=None, metavar="MIB", help="guest RAM (default: the profile's)")
            p.add_argument(
                "--timeout",
                type=float,
                default=300,
                metavar="S",
                help="give up waiting for SSH after S seconds (default: %(default)s)",
            )
            p.add_argument(
                "--inventory",
                type=Path,
                default=Path("inventories/qemu/hosts.yml"),
                help="Ansible inventory to write (default: %(default)s)",
            )
            p.add_argument("--no-inventory", action="store_true", help="do not write an inventory")
            p.set_defaults(func=_cmd_emulate_start)
        else:
            p.set_defaults(func=_cmd_emulate_run)
    p = emu_sub.add_parser("stop", help="shut the guest down cleanly (poweroff over SSH, then ACPI, then kill)")
    _add_guest_options(p)
    p.add_argument(
        "--timeout",
        type=float,
        default=120,
        metavar="S",
        help="seconds to wait for a clean shutdown (default: %(default)s)",
    )
    p.set_defaults(func=_cmd_emulate_stop)
    p = emu_sub.add_parser(
        "reboot",
        help="power the guest off cleanly and boot it again from the same disk and ports",
        description="Shut the guest down cleanly (as `stop` does) but keep its overlay, then boot it again with the "
        "same profile, CPU, ports and disk and wait for SSH: proves that what was provisioned comes up at boot. "
        "(The emulated boards run with -no-reboot, so a reboot inside the guest ends qemu.)",
    )
    _add_guest_options(p)
    p.add_argument(
        "--timeout", type=float, default=300, metavar="S", help="give up waiting for SSH after S seconds (default: 300)"
    )
    p.set_defaults(func=_cmd_emulate_reboot)
    p = emu_sub.add_parser("status", help="is the guest running, and where is its SSH port and serial log")
    _add_guest_options(p)
    p.add_argument("--json", action="store_true", help="print the guest's state as JSON (for scripts and Molecule)")
    p.set_defaults(func=_cmd_emulate_status)
    p = emu_sub.add_parser("ssh", help="open a shell on the guest, or run COMMAND there")
    _add_guest_options(p)
    p.add_argument("command", nargs=argparse.REMAINDER, help="command to run on the guest")
    p.set_defaults(func=_cmd_emulate_ssh)

    p = sub.add_parser(
        "demo",
        help="the whole job: build, boot, provision with site.yml, run the model on the Pi, keep the finished image",
        description="Build (or reuse) the base image, boot a copy of it, provision it with site.yml, run the demo "
        "model on the emulated Pi and print its predictions for the bundled samples, shut the guest down "
        "cleanly and leave the finished image and its .sha256 in build/.",
    )
    p.add_argument(
        "--board",
        default=boards.DEFAULT_BOARD,
        choices=boards.names(),
        help="target board: the image's config.txt and cmdline.txt are written for it and the guest emulates it; "
        "boards the Debian base cannot boot are refused (default: %(default)s)",
    )
    p.add_argument("--profile", default=None, help="machine profile (default: the board's)")
    p.add_argument("--cpu", default=None, help="emulated CPU (default: the board's)")
    p.add_argument(
        "--project", type=Path, default=Path.cwd(), help="the pibake checkout (default: the current directory)"
    )
    p.add_argument(
        "-o", "--output", type=Path, default=Path("build/pibake-demo.img"), help="finished image (default: %(default)s)"
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "preflight",
        help="check that native wheels can run on the board's CPU and on the emulated one (no SIGILL later)",
        description="Read the ELF ARM build attributes (Tag_CPU_arch, Tag_FP_arch, Tag_Advanced_SIMD_arch, "
        "Tag_DIV_use) of every shared object in the wheels and compare them with the board's CPU and with the "
        "CPU of the machine profile that emulates it. Exit status 1 when any wheel would die with "
        '"Illegal instruction" on either.',
        epilog="boards (core: profile and CPU that emulate it): "
        + "; ".join(
            f"{b.name} ({b.core}: {b.profile} {b.cpu})" if b.profile else f"{b.name} ({b.core}: none)"
            for b in boards.BOARDS.values()
        ),
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="WHEEL_OR_DIR", help="wheel files, or directories of them")
    p.add_argument(
        "--board", default=boards.DEFAULT_BOARD, choices=boards.names(), help="target board (default: %(default)s)"
    )
    p.add_argument("--profile", default=None, help="machine profile that emulates it (default: the board's)")
    p.add_argument("--cpu", default=None, help="CPU of that profile (default: the board's, else the profile's)")
    p.set_defaults(func=_cmd_preflight)

    from pibake.flash.writer import SAFETY_RULES

    p = sub.add_parser(
        "flash",
        help="write the finished image to an SD card: checked, sparse with a .bmap, read back and verified",
        description="Write IMAGE (default build/pibake-demo.img) to the whole card DEVICE, e.g. /dev/sdb or\n"
        "/dev/mmcblk0 (`lsblk` lists them): `pibake flash /dev/sdb`, or `pibake flash IMAGE /dev/sdb`.",
        epilog=SAFETY_RULES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "image", nargs="?", type=Path, default=Path("build/pibake-demo.img"), help="the image (default: %(default)s)"
    )
    p.add_argument("device", type=Path, help="the whole card, e.g. /dev/sdb (or a file, with --to-file)")
    p.add_argument("--bmap", type=Path, default=None, help="block map to use (default: IMAGE.bmap if it exists)")
    p.add_argument("--no-bmap", action="store_true", help="write every byte of the image, even with a .bmap")
    p.add_argument("--to-file", action="store_true", help="DEVICE may be a regular file: write the image into it")
    p.add_argument("--unmount", action="store_true", help="unmount the card's mounted filesystems, then write")
    p.add_argument(
        "--allow-non-removable", action="store_true", help="write to a device that does not say it is removable"
    )
    p.add_argument(
        "--large-device-gb",
        type=float,
        default=64,
        metavar="GB",
        help="warn about a device larger than this (default: %(default)s)",
    )
    p.add_argument("-y", "--yes", action="store_true", help="do not ask to type the device name back")
    p.add_argument("--no-verify", action="store_true", help="do not read the card back and compare")
    p.add_argument("--no-eject", action="store_true", help="leave the card in the system when done")
    p.set_defaults(func=_cmd_flash)

    from pibake.bench.run import QUICK_STEPS, STEPS

    p = sub.add_parser(
        "bench",
        help="time the pipeline on this machine: image, boots, converge, inference, serving, flashing",
        description="Run each step --repeat times and report median, min and max, with the inference times as "
        "ratios to the host's and the flash times to dd's. Writes OUTPUT_DIR/bench.json (with the machine's "
        "facts), bench.png and bench.md, and prints the table. A step that cannot run here is reported with its "
        "reason. Only one emulated guest runs at a time.",
    )
    p.add_argument("--repeat", type=int, default=3, metavar="N", help="runs of each step (default: %(default)s)")
    p.add_argument(
        "--steps", nargs="+", choices=STEPS, default=None, metavar="STEP", help=f"steps to run: {', '.join(STEPS)}"
    )
    p.add_argument("--profiles", nargs="+", default=None, metavar="PROFILE", help="machine profiles (default: all)")
    p.add_argument("--output-dir", type=Path, default=Path("build/bench"), help="(default: %(default)s)")
    p.add_argument(
        "--quick", action="store_true", help=f"smoke run: one repetition of {', '.join(QUICK_STEPS)}, small flash"
    )
    p.add_argument(
        "--cold-rootfs",
        action="store_true",
        help="image-cold also deletes the cached debootstrap root (5-7 min each time; later steps wait for it)",
    )
    p.add_argument("--flash-size-mib", type=int, default=None, help="flash image size (default: 1024, 64 with --quick)")
    p.add_argument(
        "--project", type=Path, default=Path.cwd(), help="the pibake checkout (default: the current directory)"
    )
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # paramiko narrates every connection at INFO; the harness says what matters itself.
    logging.getLogger("paramiko").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return int(args.func(args))
    except PibakeError as e:
        log.debug("error", exc_info=True)
        print(f"pibake: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pibake: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
