"""`pibake kernel build`: arguments, the kernel stage, the result printed."""

from __future__ import annotations

import argparse


def _build(a: argparse.Namespace) -> int:
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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `kernel` and its actions to the top-level subparsers SUB."""
    p_kernel = sub.add_parser("kernel", help="build no-initrd kernels for the emulated boards")
    kernel_sub = p_kernel.add_subparsers(dest="kernel_command", required=True, metavar="ACTION")
    p = kernel_sub.add_parser(
        "build",
        help="build a kernel (and the board's DTB) with everything built in, so no initrd is needed",
        description="Build the kernel for a machine profile. The 32-bit profiles (vexpress-a9, vexpress-a15, virt) "
        "share one zImage from vexpress_defconfig plus buildroot/board/pibake/linux.fragment: --provider buildroot "
        "downloads the Buildroot release pinned in buildroot/buildroot.lock (sha256-checked) and builds with the "
        "BR2_EXTERNAL tree in buildroot/; --provider debian-source cross-builds Debian's linux-source package with "
        "gcc-arm-linux-gnueabihf. virt64's arm64 Image (what 64-bit Raspberry Pi OS boots on there: its kernel8.img "
        "has no virtio drivers) is allnoconfig plus buildroot/board/pibake/linux-arm64.fragment, cross-built from "
        "Debian's linux-source with gcc-aarch64-linux-gnu. `make kernel-deps` installs the source and both "
        "compilers. Cached under a hash of versions, base config and fragment.",
    )
    p.add_argument("--profile", default="virt", help="vexpress-a9, vexpress-a15, virt or virt64 (default: %(default)s)")
    p.add_argument(
        "--provider", default="debian-source", choices=("debian-source", "buildroot"), help="(default: %(default)s)"
    )
    p.add_argument(
        "--buildroot-sha256",
        default=None,
        metavar="HEX",
        help="sha256 of the Buildroot tarball, if the lock file has none",
    )
    p.set_defaults(func=_build)
