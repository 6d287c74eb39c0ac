"""No-initrd kernels for QEMU's vexpress-a9, vexpress-a15 and virt boards.

Two providers build the same configuration (the board defconfig plus
buildroot/board/pibake/linux.fragment):

  buildroot      the pinned Buildroot release with the BR2_EXTERNAL tree in buildroot/
                 (needs buildroot.org and kernel.org);
  debian-source  Debian's linux-source package cross-built with gcc-arm-linux-gnueabihf
                 (works with nothing but a Debian mirror).

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

# profile -> (Buildroot defconfig in buildroot/configs, device tree or None)
PROFILE_KERNELS: dict[str, tuple[str, str | None]] = {
    "vexpress-a9": ("pibake_vexpress_a9_defconfig", "vexpress-v2p-ca9"),
    "vexpress-a15": ("pibake_vexpress_a15_defconfig", "vexpress-v2p-ca15-tc1"),
    "virt": ("pibake_virt_defconfig", None),
}
# The kernel's own defconfig the Buildroot defconfigs name (BR2_LINUX_KERNEL_DEFCONFIG).
LINUX_DEFCONFIG = "vexpress_defconfig"
DEBIAN_SOURCE_PACKAGE = "linux-source-6.1"
CROSS = "arm-linux-gnueabihf-"
DEBIAN_TOOLS = {
    f"{CROSS}gcc": "gcc-arm-linux-gnueabihf",
    "bc": "bc",
    "bison": "bison",
    "flex": "flex",
    "make": "make",
}


@dataclass(frozen=True)
class KernelBuild:
    profile: str
    provider: str
    kernel: Path
    dtb: Path | None
    config: Path
    cached: bool
    seconds: float


def tree() -> Path:
    if (TREE_DIR / "external.desc").is_file():
        return TREE_DIR
    raise PibakeError(f"the BR2_EXTERNAL tree is missing: no {TREE_DIR / 'external.desc'}")


def fragment() -> Path:
    return tree() / "board" / "pibake" / "linux.fragment"


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


def profile_kernel(profile: str) -> tuple[str, str | None]:
    if profile not in PROFILE_KERNELS:
        raise UsageError(
            f"no kernel build for profile {profile!r}: kernels are built for {', '.join(PROFILE_KERNELS)}; "
            "raspi2b boots the image's own Debian kernel from its boot partition"
        )
    return PROFILE_KERNELS[profile]


def defconfig_text(profile: str) -> str:
    """The Buildroot defconfig for PROFILE with the external tree's path filled in."""
    name, _ = profile_kernel(profile)
    path = tree() / "configs" / name
    return path.read_text().replace("$(BR2_EXTERNAL_PIBAKE_PATH)", str(tree()))


def buildroot_lock() -> dict[str, str]:
    data = tomllib.loads((tree() / "buildroot.lock").read_text())
    return {k: str(v) for k, v in data.items()}


def _dpkg_version(package: str) -> str:
    out = run(["dpkg-query", "-W", "-f=${Status} ${Version}", package]).strip()
    if not out.startswith("install ok installed"):
        raise ToolMissing(f"{package} is not installed: run `make kernel-deps`")
    return out.split()[-1]


def cache_key(profile: str, provider: str, *, versions: dict[str, str]) -> str:
    defconfig, _ = profile_kernel(profile)
    recipe: dict[str, object] = {
        "format": KERNEL_FORMAT,
        "provider": provider,
        "versions": versions,
        "fragment": sha256_file(fragment()),
    }
    if provider == "buildroot":
        # Buildroot builds one kernel per defconfig (CPU and DTS are in it).
        recipe["defconfig"] = sha256_file(tree() / "configs" / defconfig)
    else:
        # Debian's source builds one kernel for all three boards; DTBs for both vexpress.
        recipe["defconfig"] = LINUX_DEFCONFIG
    return recipe_hash(recipe)


def build(
    profile: str = "virt", *, provider: str = "debian-source", buildroot_sha256: str | None = None
) -> KernelBuild:
    if provider not in PROVIDERS:
        raise UsageError(f"unknown kernel provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    _, dts = profile_kernel(profile)
    t0 = time.monotonic()
    if provider == "debian-source":
        versions = {
            "linux-source": _dpkg_version(DEBIAN_SOURCE_PACKAGE),
            "gcc": _dpkg_version("gcc-arm-linux-gnueabihf"),
        }
    else:
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
                    _build_debian_source(tmp)
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
        kernel=top / "zImage",
        dtb=dtb,
        config=top / "config",
        cached=cached,
        seconds=time.monotonic() - t0,
    )


def _build_debian_source(out: Path) -> None:
    missing = [pkg for tool, pkg in DEBIAN_TOOLS.items() if shutil.which(tool) is None]
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
    make = ["make", "-C", str(src), "ARCH=arm", f"CROSS_COMPILE={CROSS}"]
    run([*make, LINUX_DEFCONFIG])
    run(
        [str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(src), str(src / ".config"), str(fragment())],
        cwd=src,
    )
    run([*make, "olddefconfig"])
    _check_config(src / ".config")
    jobs = str(os.cpu_count() or 1)
    log.info("kernel: building zImage and device trees with %s jobs (about 5 minutes on 2 cores)", jobs)
    t0 = time.monotonic()
    with progress.step(f"kernel: make -j{jobs} zImage dtbs", logger=log):
        run([*make, f"-j{jobs}", "zImage", "dtbs"], stream=False, timeout=3600)
    log.info("kernel: built in %.0f s", time.monotonic() - t0)
    shutil.copyfile(src / "arch/arm/boot/zImage", out / "zImage")
    shutil.copyfile(src / ".config", out / "config")
    for dts in {d for _, d in PROFILE_KERNELS.values() if d}:
        shutil.copyfile(src / f"arch/arm/boot/dts/{dts}.dtb", out / f"{dts}.dtb")
    shutil.rmtree(src_parent)


def _check_config(config: Path) -> None:
    missing = missing_options(parse_fragment(fragment().read_text()), config.read_text())
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
    defconfig, dts = profile_kernel(profile)
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
