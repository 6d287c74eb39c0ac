"""`pibake image build|check|fetch|prepare|finalize`: arguments, one stage call each, the result printed."""

from __future__ import annotations

import argparse
from pathlib import Path

from pibake import boards
from pibake.cli.common import image_for
from pibake.image.build import BASES, DEFAULT_BASE_32, DEFAULT_BASE_64
from pibake.image.catalogue import DEFAULT_RELEASE, DEFAULT_URL, URL_ENV

MIB = 1 << 20


def _build(a: argparse.Namespace) -> int:
    from pibake.image import build

    base = a.base or build.default_base(a.board)
    output = a.output or image_for(base)
    built = build.build(base=base, size_mb=a.size, mirror=a.mirror, board=a.board, output=output, rebuild=a.rebuild)
    print(f"{built.path}  sha256 {built.sha256}  ({base}, {'cached, ' if built.cached else ''}{built.seconds:.1f} s)")
    return 0


def _fetch(a: argparse.Namespace) -> int:
    from pibake.image import catalogue, fetch

    if a.list:
        print(catalogue.load(a.catalogue_url, refresh=a.refresh_catalogue).describe())
        return 0
    got = fetch.fetch(
        release=a.release,
        url=a.url,
        sha256=a.sha256,
        insecure_no_verify=a.insecure_no_verify,
        output=a.output,
        output_dir=Path("build"),
        retries=a.retries,
        catalogue_url=a.catalogue_url,
        refresh_catalogue=a.refresh_catalogue,
    )
    state = "cached" if got.cached else ("verified" if got.verified else "NOT VERIFIED")
    print(f"{got.path}  sha256 {got.image_sha256}  (archive sha256 {got.archive_sha256}, {state}, {got.seconds:.1f} s)")
    if got.release:
        print(f"  release {got.release} of {got.release_date}, init_format {got.init_format or 'none'}")
    return 0


def _prepare(a: argparse.Namespace) -> int:
    from pibake.image import prepare

    res = prepare.prepare_for_emulation(
        a.image,
        output=a.output,
        grow_mb=a.grow,
        grow_to_power_of_two=a.grow_to_power_of_two,
        profile=a.profile,
        user=a.user,
        password_hash=a.password_hash,
        ssh_key_file=a.ssh_key,
        hostname=a.hostname,
        emulation_tweaks=not a.no_emulation_tweaks,
    )
    print(f"{res.path}: {res.os}, {res.size_before // MIB} -> {res.size // MIB} MiB ({res.seconds:.1f} s)")
    for change in res.changes:
        print(f"  {change}")
    return 0


def _check(a: argparse.Namespace) -> int:
    from pibake.image import check

    res = check.check_boot(a.image, board=a.board)
    print(f"{res.image}: boot partition ready for {res.board}")
    print(f"  kernel {res.kernel}, initramfs {res.initrd or '(none)'}, device tree {res.dtb}, root={res.root}")
    return 0


def _finalize(a: argparse.Namespace) -> int:
    from pibake.image import finalize

    res = finalize.finalize(
        a.image,
        write_bmap=not a.no_bmap,
        manifest=a.manifest,
        board=a.board,
        imager_url=a.imager_url,
        imager_name=a.imager_name,
        init_format=a.init_format,
        xz=a.xz,
    )
    print(f"{res.path}  sha256 {res.sha256}  ({res.seconds:.1f} s)")
    if res.xz_file is not None:
        print(f"{res.xz_file}  sha256 {res.xz_sha256}")
    if res.undone:
        print(f"  undone: {', '.join(res.undone)}")
    if res.identity_reset:
        print(f"  reset, each card makes its own at first boot: {', '.join(res.identity_reset)}")
    print(f"  SSH host keys made at first boot by: {res.ssh_host_keys_made_by or 'nothing in the image'}")
    if res.shrunk_to:
        print(f"  size for the card: {res.shrunk_to // MIB} MiB")
    xz_sums = res.xz_file.with_name(res.xz_file.name + ".sha256") if res.xz_file else None
    for f in (res.sha256_file, xz_sums, res.bmap_file, res.manifest_file, res.imager_file, res.sbom_file):
        if f is not None:
            print(f"  {f}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `image` and its actions to the top-level subparsers SUB."""
    p_image = sub.add_parser("image", help="build base images")
    image_sub = p_image.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    p = image_sub.add_parser(
        "build",
        help="build a Raspberry-Pi-OS-shaped image from Debian packages, armhf or arm64 (needs root for mmdebstrap)",
        description="Debootstrap a Debian base (armhf or arm64) through qemu-user, add the pi user with the harness's "
        "SSH key, and assemble an MBR image (FAT32 bootfs + ext4 rootfs) without loop mounts. "
        "Cached under a hash of the recipe: a second build with the same recipe takes seconds.",
    )
    p.add_argument(
        "--base",
        default=None,
        choices=sorted(BASES),
        help="base system: debian-trixie-arm64 (64-bit, Python 3.13, LiteRT; the boards with a 64-bit core: pi3, "
        "pi3b-plus, pi-zero-2, pi4), debian-bookworm-armhf (32-bit, Python 3.11, tflite-runtime; pi2 and up), "
        "debian-bullseye (32-bit, Python 3.9; legacy, past its support: only when named) (default: the board's, "
        f"{DEFAULT_BASE_64} where it has a 64-bit core, {DEFAULT_BASE_32} on the pi2)",
    )
    p.add_argument("--size", type=int, default=2048, metavar="MIB", help="image size in MiB (default: %(default)s)")
    p.add_argument(
        "--mirror", default=None, help="Debian mirror URL (default: $PIBAKE_DEBIAN_MIRROR or mmdebstrap's default)"
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="where to copy the image (default: build/pibake-SUITE[-ARCH].img for the base: build/pibake-bullseye.img, "
        "build/pibake-bookworm-armhf.img, build/pibake-trixie-arm64.img)",
    )
    p.add_argument("--rebuild", action="store_true", help="ignore a cached image (the rootfs cache is kept)")
    p.add_argument(
        "--board",
        default=boards.DEFAULT_BOARD,
        choices=boards.names(),
        help="board config.txt and cmdline.txt are written for, and whose base is built without --base; Debian armhf "
        "is ARMv7, so the ARMv6 pi1 and pi-zero are refused (they need Raspberry Pi OS) (default: %(default)s)",
    )
    p.set_defaults(func=_build)

    p = image_sub.add_parser(
        "check",
        help="check an image's boot partition for a board: firmware, kernel, initramfs, device tree, root=",
        description="Reads the FAT partition with mtools (no mounts): the board's GPU firmware files are there, "
        "config.txt's kernel= and initramfs name files that exist, a Debian kernel is one the board's core "
        "runs (not on the ARMv6 pi1 and pi-zero), the board's device tree is there and cmdline.txt's root= names the "
        "root partition. Lists every problem found. This is the firmware stage "
        "that QEMU does not emulate.",
    )
    p.add_argument("image", type=Path, help="raw image")
    p.add_argument(
        "--board",
        default=None,
        choices=boards.names(),
        help="board to check for (default: the one pibake recorded in config.txt)",
    )
    p.set_defaults(func=_check)

    p = image_sub.add_parser(
        "fetch",
        help="download a Raspberry Pi OS image named in Raspberry Pi's OS list, check it, decompress it (cached)",
        description="Download a release of Raspberry Pi OS as Raspberry Pi Imager finds it, from Raspberry Pi's "
        "published OS list (os_list_imagingutility_v4.json, cached for a day; offline, an older cached copy is "
        "used with a warning of its age), or any URL with its sha256. Release names come from the image's file "
        "name: trixie-arm64-lite, bookworm-armhf-lite, trixie-armhf (the desktop image), and latest-ARCH[-lite|-full] "
        f"for the newest Debian suite; the default is {DEFAULT_RELEASE}, the current Lite for the 32-bit OS every "
        "board in pibake's table runs. The archive's sha256 (where the list gives it) is checked before it is "
        "unpacked, and the image's extract_sha256 and extract_size after; nothing is cached unless they match. "
        "Resumes an interrupted download, decompresses .xz, .gz and .zip, and copies the image to OUTPUT with "
        "OUTPUT.sha256.",
    )
    p.add_argument(
        "--release", default=None, help=f"release or alias from the OS list (see --list; default: {DEFAULT_RELEASE})"
    )
    p.add_argument("--url", default=None, help="download this URL instead of a catalogue release (needs --sha256)")
    p.add_argument("--sha256", default=None, metavar="HEX", help="the archive's published sha256")
    p.add_argument(
        "--insecure-no-verify", action="store_true", help="take a URL without a sha256 (the digest is only reported)"
    )
    p.add_argument("-o", "--output", type=Path, default=None, help="image file to write (default: build/NAME.img)")
    p.add_argument(
        "--retries", type=int, default=3, help="resume a cut download this many times (default: %(default)s)"
    )
    p.add_argument("--list", action="store_true", help="list the releases of the OS list and exit")
    p.add_argument(
        "--catalogue-url",
        default=None,
        metavar="URL",
        help=f"the OS list to read (http(s):// or file://; default: ${URL_ENV}, else Raspberry Pi's, {DEFAULT_URL})",
    )
    p.add_argument(
        "--refresh-catalogue",
        action="store_true",
        help="fetch the OS list again even if the cached copy is less than a day old (an error if that fails)",
    )
    p.set_defaults(func=_fetch)

    p = image_sub.add_parser(
        "prepare",
        help="grow an image, enable SSH, add the user, key and hostname, apply emulation-only tweaks (no root)",
        description="Works on IMAGE in place, or on a copy with -o. Each setting goes in the format the image reads "
        "on its first boot: Raspberry Pi OS with cloud-init (trixie on) gets boot:/user-data (the user, its key, "
        "sudo, the hostname, ssh.service enabled) and boot:/meta-data naming a new instance; Raspberry Pi OS with "
        "userconf-pi (bullseye, bookworm) gets boot:/ssh and boot:/userconf.txt (its first boot renames the uid-1000 "
        "user); the Debian-built base gets the user in its account files. A Raspberry Pi OS with neither, or with a "
        "user-data of its own, is refused before anything is written. Emulation-only tweaks (ld.so.preload, "
        "cmdline.txt's first-boot words, the power-of-two size of an SD-card profile) are recorded in the image so "
        "that `finalize` undoes exactly those.",
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
    p.set_defaults(func=_prepare)

    p = image_sub.add_parser(
        "finalize",
        help="undo the emulation tweaks, fsck, write IMAGE.sha256, .bmap, .manifest.json, .os_list.json, .cdx.json",
        description="Puts back exactly what `prepare` changed for emulation, shrinks an image grown to a power of "
        "two back to the size asked for, checks both filesystems, and describes the result: the base image's "
        "digest, Debian packages, Python distributions and the model's files, with versions and digests "
        "(IMAGE.manifest.json, and the same as a CycloneDX 1.6 SBOM, IMAGE.cdx.json), and IMAGE.os_list.json, "
        "an OS list with the image's entry for Raspberry Pi Imager (`rpi-imager --repo IMAGE.os_list.json`: "
        "Imager then checks the image's sha256 as it writes and offers its customisation screen).",
    )
    p.add_argument("image", type=Path, help="prepared (and provisioned) raw image")
    p.add_argument("--manifest", type=Path, default=None, help="manifest path (default: IMAGE.manifest.json)")
    p.add_argument("--no-bmap", action="store_true", help="do not write IMAGE.bmap")
    p.add_argument(
        "--xz",
        action="store_true",
        help="also write IMAGE.xz (xz on every core; the image is kept) and IMAGE.xz.sha256; Imager's entry then "
        "downloads the .xz (bmaptool copy --bmap IMAGE.bmap IMAGE.xz writes it too)",
    )
    p.add_argument(
        "--imager-url",
        default=None,
        metavar="URL",
        help="where Imager will download the image, http(s):// or file://, naming the .img itself, or the .img.xz "
        "with --xz (default: its file:// URL, for Imager on this machine)",
    )
    p.add_argument(
        "--imager-name", default=None, metavar="NAME", help="the name Imager shows (default: 'IMAGE-STEM (pibake)')"
    )
    p.add_argument(
        "--init-format",
        default=None,
        choices=("none", "systemd", "cloudinit", "cloudinit-rpi"),
        help="which first-boot settings Imager may write (default: read from the image: cloudinit-rpi for "
        "Raspberry Pi OS with cloud-init, systemd for earlier Raspberry Pi OS, none for the Debian-built base)",
    )
    p.add_argument(
        "--board",
        default=None,
        choices=boards.names(),
        help="check the boot partition for this board, and name it in IMAGE.os_list.json's devices (default: "
        "the one recorded in config.txt; images without one, such as Raspberry Pi OS, are not checked and "
        "list every board of their architecture)",
    )
    p.set_defaults(func=_finalize)
