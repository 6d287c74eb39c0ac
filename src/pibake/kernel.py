"""No-initrd kernels for QEMU's vexpress-a9, vexpress-a15 and virt boards (32-bit) and virt64 (arm64).

Two providers build the same 32-bit configuration (the board defconfig plus
buildroot/board/pibake/linux.fragment):

  buildroot      the pinned Buildroot release with the BR2_EXTERNAL tree in buildroot/
                 (needs buildroot.org and kernel.org);
  debian-source  Debian's linux-source package cross-built with gcc-arm-linux-gnueabihf
                 (works with nothing but a Debian mirror).

The arm64 kernel for virt64 (what 64-bit Raspberry Pi OS boots on there: its kernel8.img has no
virtio drivers) comes from debian-source only: the kernel's allnoconfig plus
buildroot/board/pibake/linux-arm64.fragment, cross-built with gcc-aarch64-linux-gnu.

Results are cached under cache/kernels/<hash of provider, versions, defconfig, fragment>.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pibake import resources
from pibake.errors import PibakeError, ToolMissing, UsageError, VerificationFailed
from pibake.util import progress
from pibake.util.cache import cache_root, locked, recipe_hash, sha256_file
from pibake.util.proc import run

log = logging.getLogger(__name__)

KERNEL_FORMAT = 1
TREE_DIR = resources.BUILDROOT
PROVIDERS = ("debian-source", "buildroot")

# profile -> (Buildroot defconfig in buildroot/configs or None for none, device tree or None)
PROFILE_KERNELS: dict[str, tuple[str | None, str | None]] = {
    "vexpress-a9": ("pibake_vexpress_a9_defconfig", "vexpress-v2p-ca9"),
    "vexpress-a15": ("pibake_vexpress_a15_defconfig", "vexpress-v2p-ca15-tc1"),
    "virt": ("pibake_virt_defconfig", None),
    "virt64": (None, None),
}
DEBIAN_SOURCE_PACKAGE = "linux-source-6.1"


@dataclass(frozen=True)
class KernelArch:
    """How Debian's linux-source is built for one Debian architecture."""

    arch: str  # the kernel's ARCH=
    cross: str  # CROSS_COMPILE=
    gcc_package: str  # the Debian package of {cross}gcc
    defconfig: str  # the kernel's own config target the fragment is merged onto
    fragment: str  # file name in buildroot/board/pibake
    image: str  # make target, and its file in arch/ARCH/boot
    dtbs: bool  # the profiles' device trees are built beside it


# armhf: one kernel for vexpress-a9, vexpress-a15 and virt (vexpress_defconfig is what the Buildroot defconfigs name
# as BR2_LINUX_KERNEL_DEFCONFIG, and has the virt board's drivers as well); arm64: virt64 only, so the smallest base.
KERNEL_ARCHES = {
    "armhf": KernelArch(
        "arm", "arm-linux-gnueabihf-", "gcc-arm-linux-gnueabihf", "vexpress_defconfig", "linux.fragment", "zImage", True
    ),
    "arm64": KernelArch(
        "arm64", "aarch64-linux-gnu-", "gcc-aarch64-linux-gnu", "allnoconfig", "linux-arm64.fragment", "Image", False
    ),
}
BUILD_TOOLS = {"bc": "bc", "bison": "bison", "flex": "flex", "make": "make"}


@dataclass(frozen=True)
class KernelBuild:
    profile: str
    provider: str
    kernel: Path
    dtb: Path | None
    config: Path
    cached: bool
    seconds: float

    def describe(self) -> str:
        """What booted, for a report: "pibake's virt64 kernel (debian-source: linux-source 6.1.192-3, gcc 12.2.0)"."""
        meta = json.loads((self.kernel.parent / "meta.json").read_text())
        versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        return f"pibake's {self.profile} kernel ({self.provider}: {versions})"


def tree() -> Path:
    if (TREE_DIR / "external.desc").is_file():
        return TREE_DIR
    raise PibakeError(f"the BR2_EXTERNAL tree is missing: no {TREE_DIR / 'external.desc'}")


def profile_arch(profile: str) -> str:
    """The Debian architecture PROFILE's kernel is built for: "arm64" for virt64, else "armhf"."""
    profile_kernel(profile)
    return "arm64" if profile == "virt64" else "armhf"


def fragment(arch: str = "armhf") -> Path:
    """The config fragment of ARCH's kernels (KERNEL_ARCHES)."""
    return tree() / "board" / "pibake" / KERNEL_ARCHES[arch].fragment


def parse_fragment(text: str) -> dict[str, str]:
    """CONFIG_X=y lines and '# CONFIG_X is not set' lines of a kernel config, as {name: value}."""
    options: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("CONFIG_") and "=" in line:
            name, value = line.split("=", 1)
            options[name] = value
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            options[line[2:].split()[0]] = "n"
    return options


def missing_options(wanted: dict[str, str], config_text: str) -> list[str]:
    """Options of the fragment that the final .config does not have as asked (Kconfig drops
    options whose dependencies are unmet, silently)."""
    have = parse_fragment(config_text)
    return [f"{k}={v}" for k, v in sorted(wanted.items()) if have.get(k, "n") != v]


def profile_kernel(profile: str) -> tuple[str | None, str | None]:
    if profile not in PROFILE_KERNELS:
        raise UsageError(
            f"no kernel build for profile {profile!r}: kernels are built for {', '.join(PROFILE_KERNELS)}; "
            "the board models (raspi2b, raspi3b, raspi4b) boot the image's own kernel from its boot partition"
        )
    return PROFILE_KERNELS[profile]


def defconfig_text(profile: str) -> str:
    """The Buildroot defconfig for PROFILE with the external tree's path filled in (UsageError: it has none)."""
    name = _buildroot_defconfig(profile)
    path = tree() / "configs" / name
    return path.read_text().replace("$(BR2_EXTERNAL_PIBAKE_PATH)", str(tree()))


def _buildroot_defconfig(profile: str) -> str:
    name, _ = profile_kernel(profile)
    if name is None:
        raise UsageError(
            f"the {profile} kernel is built from Debian's linux-source only (--provider debian-source): the Buildroot "
            "tree in buildroot/ has 32-bit defconfigs only"
        )
    return name


def buildroot_lock() -> dict[str, str]:
    data = tomllib.loads((tree() / "buildroot.lock").read_text())
    return {k: str(v) for k, v in data.items()}


def _dpkg_version(package: str) -> str:
    out = run(["dpkg-query", "-W", "-f=${Status} ${Version}", package]).strip()
    if not out.startswith("install ok installed"):
        raise ToolMissing(f"{package} is not installed: run `make kernel-deps`")
    return out.split()[-1]


def cache_key(profile: str, provider: str, *, versions: dict[str, str]) -> str:
    arch = profile_arch(profile)
    recipe: dict[str, object] = {
        "format": KERNEL_FORMAT,
        "provider": provider,
        "versions": versions,
        "fragment": sha256_file(fragment(arch)),
    }
    if provider == "buildroot":
        # Buildroot builds one kernel per defconfig (CPU and DTS are in it).
        recipe["defconfig"] = sha256_file(tree() / "configs" / _buildroot_defconfig(profile))
    else:
        # Debian's source builds one kernel per architecture: armhf's for all three 32-bit boards, with DTBs for both
        # vexpress. (armhf's recipe has no "arch", as before arm64 came: its kernels stay cached.)
        recipe["defconfig"] = KERNEL_ARCHES[arch].defconfig
        if arch != "armhf":
            recipe["arch"] = arch
    return recipe_hash(recipe)


def build(
    profile: str = "virt", *, provider: str = "debian-source", buildroot_sha256: str | None = None
) -> KernelBuild:
    """The no-initrd kernel for PROFILE (PROFILE_KERNELS), built by PROVIDER (PROVIDERS) or taken from the cache.

    Raises UsageError for an unknown profile or provider, or virt64 with buildroot; ToolMissing when the
    source or cross compiler is not installed (`make kernel-deps`); VerificationFailed when Kconfig dropped
    an option of the fragment. A cold build takes minutes (measured here, 2 cores: armhf 13 min, arm64 4 min).
    """
    if provider not in PROVIDERS:
        raise UsageError(f"unknown kernel provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    _, dts = profile_kernel(profile)
    arch = profile_arch(profile)
    karch = KERNEL_ARCHES[arch]
    t0 = time.monotonic()
    if provider == "debian-source":
        versions = {
            "linux-source": _dpkg_version(DEBIAN_SOURCE_PACKAGE),
            "gcc": _dpkg_version(karch.gcc_package),
        }
    else:
        _buildroot_defconfig(profile)
        versions = {"buildroot": buildroot_lock()["version"]}
    key = cache_key(profile, provider, versions=versions)
    top = cache_root() / "kernels" / key
    with locked(top.with_name(key + ".lock"), f"kernel {key[:12]}"):
        cached = (top / "meta.json").exists()
        if not cached:
            tmp = top.with_name(key + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                if provider == "debian-source":
                    _build_debian_source(tmp, arch)
                else:
                    _build_buildroot(profile, tmp, sha256=buildroot_sha256)
                (tmp / "meta.json").write_text(
                    json.dumps({"profile": profile, "provider": provider, "versions": versions})
                )
                shutil.rmtree(top, ignore_errors=True)
                tmp.rename(top)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    dtb = top / f"{dts}.dtb" if dts else None
    if dtb is not None and not dtb.exists():
        raise PibakeError(f"the kernel build in {top} has no {dtb.name}")
    return KernelBuild(
        profile=profile,
        provider=provider,
        kernel=top / karch.image,
        dtb=dtb,
        config=top / "config",
        cached=cached,
        seconds=time.monotonic() - t0,
    )


def _build_debian_source(out: Path, arch: str) -> None:
    karch = KERNEL_ARCHES[arch]
    tools = {**BUILD_TOOLS, f"{karch.cross}gcc": karch.gcc_package}
    missing = [pkg for tool, pkg in tools.items() if shutil.which(tool) is None]
    if missing:
        raise ToolMissing(f"missing build tools ({', '.join(missing)}): run `make kernel-deps`")
    tarballs = sorted(Path("/usr/src").glob(f"{DEBIAN_SOURCE_PACKAGE}.tar.*"))
    if not tarballs:
        raise ToolMissing(f"/usr/src/{DEBIAN_SOURCE_PACKAGE}.tar.xz is missing: run `make kernel-deps`")
    src_parent = out / "src"
    src_parent.mkdir()
    log.info("kernel: unpacking %s", tarballs[0].name)
    run(["tar", "-xf", str(tarballs[0]), "-C", str(src_parent)])
    src = next(p for p in src_parent.iterdir() if p.is_dir())
    make = ["make", "-C", str(src), f"ARCH={karch.arch}", f"CROSS_COMPILE={karch.cross}"]
    run([*make, karch.defconfig])
    run(
        [
            str(src / "scripts/kconfig/merge_config.sh"),
            *("-m", "-O", str(src), str(src / ".config"), str(fragment(arch))),
        ],
        cwd=src,
    )
    run([*make, "olddefconfig"])
    _check_config(src / ".config", arch)
    jobs = str(os.cpu_count() or 1)
    targets = [karch.image, "dtbs"] if karch.dtbs else [karch.image]
    log.info("kernel: building %s for %s with %s jobs (minutes on 2 cores)", " and ".join(targets), arch, jobs)
    t0 = time.monotonic()
    with progress.step(f"kernel: make -j{jobs} {' '.join(targets)}", logger=log):
        run([*make, f"-j{jobs}", *targets], stream=False, timeout=3600)
    log.info("kernel: built in %.0f s", time.monotonic() - t0)
    boot = src / "arch" / karch.arch / "boot"
    shutil.copyfile(boot / karch.image, out / karch.image)
    shutil.copyfile(src / ".config", out / "config")
    if karch.dtbs:
        for dts in {d for _, d in PROFILE_KERNELS.values() if d}:
            shutil.copyfile(boot / "dts" / f"{dts}.dtb", out / f"{dts}.dtb")
    shutil.rmtree(src_parent)


def _check_config(config: Path, arch: str) -> None:
    missing = missing_options(parse_fragment(fragment(arch).read_text()), config.read_text())
    if missing:
        raise VerificationFailed(
            "the kernel configuration dropped options the fragment asks for (unmet dependencies?): "
            + ", ".join(missing)
        )


def _build_buildroot(profile: str, out: Path, *, sha256: str | None) -> None:
    lock = buildroot_lock()
    digest = sha256 or lock.get("sha256", "")
    if not digest:
        raise UsageError(
            f"buildroot/buildroot.lock pins Buildroot {lock['version']} without a sha256: pass --buildroot-sha256 HEX "
            "from the release announcement (or record it in the lock file)"
        )
    from pibake.image import fetch

    tarball = fetch.download(lock["url"], sha256=digest)
    src_parent = out / "src"
    src_parent.mkdir()
    run(["tar", "-xf", str(tarball), "-C", str(src_parent)])
    src = next(p for p in src_parent.iterdir() if p.is_dir())
    build_dir = out / "output"
    defconfig, dts = _buildroot_defconfig(profile), profile_kernel(profile)[1]
    make = ["make", "-C", str(src), f"O={build_dir}", f"BR2_EXTERNAL={tree()}"]
    run([*make, defconfig])
    log.info("kernel: Buildroot %s building the kernel for %s", lock["version"], profile)
    with progress.step(f"kernel: Buildroot make linux for {profile}", logger=log) as status:
        run([*make, "linux"], stream=True, on_line=status.output, timeout=7200)
    images = build_dir / "images"
    shutil.copyfile(images / "zImage", out / "zImage")
    shutil.copyfile(next(build_dir.glob("build/linux-*/.config")), out / "config")
    if dts:
        shutil.copyfile(images / f"{dts}.dtb", out / f"{dts}.dtb")
    shutil.rmtree(src_parent)
    shutil.rmtree(build_dir)
