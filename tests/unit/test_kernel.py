from __future__ import annotations

from pathlib import Path

import pytest

from pibake import kernel
from pibake.errors import PibakeError
from pibake.util.cache import recipe_hash, sha256_file


def test_fragment_has_what_a_no_initrd_boot_of_raspberry_pi_os_needs() -> None:
    opts = kernel.parse_fragment(kernel.fragment().read_text())
    for name in (
        "CONFIG_DEVTMPFS",
        "CONFIG_DEVTMPFS_MOUNT",
        "CONFIG_CGROUPS",
        "CONFIG_AUTOFS_FS",
        "CONFIG_FHANDLE",
        "CONFIG_EXT4_FS",
        "CONFIG_VFAT_FS",
        "CONFIG_MMC_ARMMMCI",
        "CONFIG_VIRTIO_BLK",
        "CONFIG_VIRTIO_NET",
        "CONFIG_SMSC911X",
    ):
        assert opts.get(name) == "y", name  # built in, not a module: there is no initrd


def test_missing_options_names_what_kconfig_dropped() -> None:
    wanted = {"CONFIG_A": "y", "CONFIG_B": "y", "CONFIG_C": "n"}
    config = "CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\n"
    assert kernel.missing_options(wanted, config) == ["CONFIG_B=y"]


@pytest.mark.parametrize(
    ("profile", "cpu", "dts"),
    [
        ("vexpress-a9", "BR2_cortex_a9=y", "vexpress-v2p-ca9"),
        ("vexpress-a15", "BR2_cortex_a15=y", "vexpress-v2p-ca15-tc1"),
    ],
)
def test_buildroot_defconfigs_are_kernel_only_with_the_fragment(profile: str, cpu: str, dts: str) -> None:
    text = kernel.defconfig_text(profile)
    assert cpu in text
    assert 'BR2_LINUX_KERNEL_DEFCONFIG="vexpress"' in text
    assert f'BR2_LINUX_KERNEL_INTREE_DTS_NAME="{dts}"' in text
    assert f'BR2_LINUX_KERNEL_CONFIG_FRAGMENT_FILES="{kernel.fragment()}"' in text
    assert "# BR2_TARGET_ROOTFS_TAR is not set" in text  # no root filesystem: the image brings its own
    assert "BR2_INIT_NONE=y" in text


def test_virt_defconfig_has_no_device_tree_and_raspi2b_has_no_kernel_build() -> None:
    assert "DTS" not in kernel.defconfig_text("virt")
    with pytest.raises(PibakeError, match=r"board models \(raspi2b, raspi3b, raspi4b\) boot the image's own"):
        kernel.defconfig_text("raspi2b")


def test_cache_key_follows_versions_provider_and_defconfig() -> None:
    a = kernel.cache_key("vexpress-a9", "debian-source", versions={"linux-source": "6.1.1"})
    assert a == kernel.cache_key("virt", "debian-source", versions={"linux-source": "6.1.1"})  # one kernel, all boards
    assert a != kernel.cache_key("vexpress-a9", "debian-source", versions={"linux-source": "6.1.2"})
    br9 = kernel.cache_key("vexpress-a9", "buildroot", versions={"buildroot": "2026.08"})
    assert br9 != a
    assert br9 != kernel.cache_key("vexpress-a15", "buildroot", versions={"buildroot": "2026.08"})


def test_arm64_fragment_has_the_virt_board_and_nothing_32_bit() -> None:
    opts = kernel.parse_fragment(kernel.fragment("arm64").read_text())
    for name in (
        "CONFIG_BINFMT_ELF",  # allnoconfig turns these off
        "CONFIG_BINFMT_SCRIPT",
        "CONFIG_DEVTMPFS_MOUNT",
        "CONFIG_EXT4_FS",
        "CONFIG_VFAT_FS",
        "CONFIG_VIRTIO_MMIO",
        "CONFIG_VIRTIO_BLK",
        "CONFIG_VIRTIO_NET",
        "CONFIG_SERIAL_AMBA_PL011_CONSOLE",
        "CONFIG_UNIX98_PTYS",
    ):
        assert opts.get(name) == "y", name
    assert not {"CONFIG_VFP", "CONFIG_NEON", "CONFIG_ARCH_VIRT", "CONFIG_SMSC911X"} & set(opts)


def test_virt64_is_arm64_from_debian_source_only(isolated_cache: Path) -> None:
    assert kernel.profile_arch("virt64") == "arm64"
    assert kernel.profile_arch("virt") == "armhf"
    with pytest.raises(PibakeError, match="virt64 kernel is built from Debian's linux-source only"):
        kernel.build("virt64", provider="buildroot", buildroot_sha256="0" * 64)
    assert not (isolated_cache / "kernels").exists()


def test_armhf_cache_key_is_the_one_before_arm64_came() -> None:
    """Adding arm64 left armhf's recipe as it was, so kernels built before stay cached."""
    versions = {"linux-source": "6.1.1", "gcc": "12"}
    recipe = {
        "format": kernel.KERNEL_FORMAT,
        "provider": "debian-source",
        "versions": versions,
        "fragment": sha256_file(kernel.fragment()),
        "defconfig": "vexpress_defconfig",
    }
    assert kernel.cache_key("virt", "debian-source", versions=versions) == recipe_hash(recipe)
    arm64 = kernel.cache_key("virt64", "debian-source", versions=versions)
    assert arm64 != recipe_hash(recipe)
    assert arm64 == recipe_hash(
        {**recipe, "fragment": sha256_file(kernel.fragment("arm64")), "defconfig": "allnoconfig", "arch": "arm64"}
    )


def test_cache_key_follows_the_fragment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = kernel.cache_key("virt", "debian-source", versions={})
    copy = tmp_path / "buildroot"
    import shutil

    shutil.copytree(kernel.tree(), copy)
    with (copy / "board/pibake/linux.fragment").open("a") as f:
        f.write("CONFIG_EXTRA=y\n")
    monkeypatch.setattr(kernel, "TREE_DIR", copy)
    assert kernel.cache_key("virt", "debian-source", versions={}) != before


def test_buildroot_without_a_pinned_sha256_is_refused_before_downloading(isolated_cache: Path) -> None:
    with pytest.raises(PibakeError, match="--buildroot-sha256"):
        kernel.build("vexpress-a9", provider="buildroot")


def test_buildroot_download_failure_is_clear_and_caches_nothing(isolated_cache: Path) -> None:
    # These machines cannot reach buildroot.org; with a network, the made-up digest fails instead.
    with pytest.raises(PibakeError, match=r"buildroot-2026\.08\.tar\.xz"):
        kernel.build("vexpress-a9", provider="buildroot", buildroot_sha256="0" * 64)
    kernels = isolated_cache / "kernels"
    assert not kernels.exists() or not any(p.name.endswith(("zImage", "meta.json")) for p in kernels.rglob("*"))
