from __future__ import annotations

import dataclasses
import shutil
import tomllib
from pathlib import Path

import pytest

from pibake.emulate import profiles
from pibake.errors import PibakeError, ToolMissing


def _launch(tmp_path: Path, **kw: object) -> profiles.Launch:
    args: dict[str, object] = {
        "kernel": tmp_path / "vmlinuz",
        "initrd": tmp_path / "initrd.img",
        "cmdline": "console=ttyAMA0 root=PARTUUID=0000abcd-02",
        "drive": tmp_path / "overlay.qcow2",
        "drive_format": "qcow2",
        "ssh_port": 40022,
        "serial_log": tmp_path / "serial.log",
        "qmp_socket": tmp_path / "qmp.sock",
        "pidfile": tmp_path / "qemu.pid",
    }
    args.update(kw)
    return profiles.Launch(**args)  # type: ignore[arg-type]


def _after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_virt_profile_gives_a_vfpv4_neon_cpu_with_virtio_and_loopback_ssh(tmp_path: Path) -> None:
    prof = profiles.load("virt")
    assert {"vfpv4", "neon"} <= set(prof.features())
    argv = profiles.qemu_command(prof, _launch(tmp_path))
    assert argv[0] == "qemu-system-arm"
    assert _after(argv, "-M") == "virt"
    assert _after(argv, "-cpu") == "cortex-a15"
    assert _after(argv, "-append") == "console=ttyAMA0 root=PARTUUID=0000abcd-02"
    assert f"file={tmp_path / 'overlay.qcow2'},if=none,format=qcow2,id=hd0" in argv
    assert "virtio-blk-device,drive=hd0" in argv
    assert "user,id=n0,hostfwd=tcp:127.0.0.1:40022-:22" in argv  # loopback only
    assert _after(argv, "-serial") == f"file:{tmp_path / 'serial.log'}"
    assert "-no-reboot" in argv


def test_extra_ports_are_forwarded_on_loopback_next_to_ssh(tmp_path: Path) -> None:
    argv = profiles.qemu_command(profiles.load("virt"), _launch(tmp_path, forwards=((41000, 8000), (41001, 9090))))
    assert (
        "user,id=n0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:41000-:8000,hostfwd=tcp:127.0.0.1:41001-:9090"
        in argv
    )
    argv = profiles.qemu_command(profiles.load("raspi2b"), _launch(tmp_path, forwards=((41000, 8000),), dtb=tmp_path))
    assert "user,id=n0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:41000-:8000" in argv


def test_cpu_and_memory_can_be_chosen_within_the_profile(tmp_path: Path) -> None:
    prof = profiles.load("virt")
    argv = profiles.qemu_command(prof, _launch(tmp_path, cpu="cortex-a7", memory_mb=2048))
    assert _after(argv, "-cpu") == "cortex-a7"
    assert _after(argv, "-m") == "2048"
    with pytest.raises(PibakeError, match=r"cannot emulate CPU 'cortex-a9'.*cortex-a15"):
        profiles.qemu_command(prof, _launch(tmp_path, cpu="cortex-a9"))
    with pytest.raises(PibakeError, match="64 to 3072 MiB"):
        profiles.qemu_command(prof, _launch(tmp_path, memory_mb=8192))


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(PibakeError, match=r"unknown machine profile 'pdp11'.*virt"):
        profiles.load("pdp11")


def test_every_profile_file_parses() -> None:
    names = profiles.available()
    assert "virt" in names
    for name in names:
        assert profiles.load(name).name == name


def _data(**over: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "sdboard",
        "machine": "vexpress-a9",
        "cpu": "cortex-a9",
        "cpus": {"cortex-a9": ["neon", "vfpv3"]},
        "resources": {"smp": 1, "memory_mb": 512, "max_memory_mb": 1024},
        "disk": {"bus": "sd", "guest_device": "/dev/mmcblk0"},
        "network": {"model": "nic", "guest_interface": "eth0"},
        "boot": {"console": "ttyAMA0"},
    }
    data.update(over)
    return data


def test_sd_and_board_nic_profiles_map_to_their_qemu_options(tmp_path: Path) -> None:
    prof = profiles.parse(_data())
    argv = profiles.qemu_command(prof, _launch(tmp_path, drive_format="raw"))
    assert f"file={tmp_path / 'overlay.qcow2'},if=sd,format=raw" in argv
    assert _after(argv, "-nic") == "user,hostfwd=tcp:127.0.0.1:40022-:22"
    usb = profiles.parse(_data(network={"model": "usb-net", "guest_interface": "usb0"}))
    assert "usb-net,netdev=n0" in profiles.qemu_command(usb, _launch(tmp_path))


def test_malformed_profiles_are_refused_with_their_source() -> None:
    with pytest.raises(PibakeError, match=r"x\.toml: malformed"):
        profiles.parse({"name": "x"}, source="x.toml")
    with pytest.raises(PibakeError, match="disk bus must be one of"):
        profiles.parse(_data(disk={"bus": "scsi", "guest_device": "/dev/sda"}))


def test_sd_profiles_pass_their_device_tree_and_fixed_socs_take_no_cpu_choice(tmp_path: Path) -> None:
    a9 = profiles.load("vexpress-a9")
    assert a9.needs_power_of_two
    assert "vfpv4" not in a9.features()  # the reason the classic setup crashes
    argv = profiles.qemu_command(a9, _launch(tmp_path, drive_format="raw", dtb=tmp_path / "vexpress-v2p-ca9.dtb"))
    assert _after(argv, "-dtb") == str(tmp_path / "vexpress-v2p-ca9.dtb")
    assert _after(argv, "-cpu") == "cortex-a9"
    with pytest.raises(PibakeError, match=r"device tree vexpress-v2p-ca9\.dtb"):
        profiles.qemu_command(a9, _launch(tmp_path))

    pi2 = profiles.load("raspi2b")
    argv = profiles.qemu_command(pi2, _launch(tmp_path, dtb=tmp_path / "bcm2836-rpi-2-b.dtb"))
    assert "-cpu" not in argv and "-smp" not in argv
    assert _after(argv, "-m") == "1024"
    assert "usb-net,netdev=n0" in argv
    with pytest.raises(PibakeError, match="fixed SoC"):
        profiles.qemu_command(pi2, _launch(tmp_path, dtb=tmp_path / "x.dtb", memory_mb=512))


def test_a_kernel_without_initrd_gets_no_initrd_option(tmp_path: Path) -> None:
    argv = profiles.qemu_command(profiles.load("virt"), _launch(tmp_path, initrd=None))
    assert "-initrd" not in argv


def test_the_64_bit_profile_runs_qemu_system_aarch64_on_the_boards_core(tmp_path: Path) -> None:
    prof = profiles.load("virt64")
    assert prof.arch == "arm64"
    argv = profiles.qemu_command(prof, _launch(tmp_path, cpu="cortex-a53"))
    assert argv[0] == "qemu-system-aarch64"
    assert _after(argv, "-M") == "virt"
    assert _after(argv, "-cpu") == "cortex-a53"
    assert "virtio-blk-device,drive=hd0" in argv
    # Only the Pi 5's Cortex-A76 (ARMv8.2) has the dot product instructions.
    assert "asimddp" in prof.features("cortex-a76")
    assert "asimddp" not in prof.features("cortex-a72")
    with pytest.raises(PibakeError, match="cannot emulate CPU 'cortex-a15'"):
        profiles.qemu_command(prof, _launch(tmp_path, cpu="cortex-a15"))
    assert profiles.qemu_binary(profiles.load("virt")) == "qemu-system-arm"


def test_a_profile_of_an_unknown_architecture_is_refused() -> None:
    data = tomllib.loads((profiles.profile_dir() / "virt64.toml").read_text())
    data["arch"] = "riscv64"
    with pytest.raises(PibakeError, match="arch must be one of"):
        profiles.parse(data, source="x.toml")


def test_the_pi_3_board_model_runs_the_image_s_own_64_bit_kernel_on_its_soc(tmp_path: Path) -> None:
    prof = profiles.load("raspi3b")
    assert (prof.arch, prof.machine, prof.cpu) == ("arm64", "raspi3b", "cortex-a53")  # the Pi 3's own core
    assert prof.needs_power_of_two and prof.dtb == "bcm2837-rpi-3-b.dtb"
    argv = profiles.qemu_command(prof, _launch(tmp_path, dtb=tmp_path / "bcm2837-rpi-3-b.dtb"))
    assert argv[0] == "qemu-system-aarch64" and _after(argv, "-M") == "raspi3b"
    assert "-cpu" not in argv and "-smp" not in argv and _after(argv, "-m") == "1024"
    assert "usb-net,netdev=n0" in argv  # no Ethernet on the board model: USB networking
    # The same Cortex-A53 features as virt64's cortex-a53: the board model changes the SoC, not the core.
    assert prof.features() == profiles.load("virt64").features("cortex-a53")
    with pytest.raises(PibakeError, match="fixed SoC"):
        profiles.qemu_command(prof, _launch(tmp_path, dtb=tmp_path / "x.dtb", memory_mb=512))


@pytest.mark.skipif(shutil.which("qemu-system-aarch64") is None, reason="qemu-system-aarch64 not installed (make deps)")
def test_a_machine_the_installed_qemu_lacks_is_refused_with_the_release_that_has_it() -> None:
    # The installed QEMU itself is asked (its -machine help): bookworm's 7.2 has raspi3b, and raspi4b only from 9.0.
    profiles.check_machine(profiles.load("raspi3b"))
    pi4 = profiles.load("raspi4b")
    version = profiles.qemu_version("qemu-system-aarch64")
    release = profiles.qemu_release(version)
    assert release is not None, version
    if release < (9, 0, 0):
        with pytest.raises(ToolMissing, match=r"raspi4b machine.*QEMU 9\.0 or later.*bookworm-backports"):
            profiles.check_machine(pi4)
    elif release <= profiles.MACHINE_BROKEN["raspi4b"][0]:
        with pytest.raises(ToolMissing, match=r"cannot boot pibake's images.*brcmstb_l2_intc_of_init.*virt64"):
            profiles.check_machine(pi4)
    else:
        profiles.check_machine(pi4)
    odd = dataclasses.replace(pi4, name="pdp", machine="pdp11")
    with pytest.raises(ToolMissing, match=r"profile pdp runs QEMU's pdp11 machine.*a newer QEMU"):
        profiles.check_machine(odd)


def test_the_pi_4_board_model_is_the_pi_4_s_soc() -> None:
    prof = profiles.load("raspi4b")
    assert (prof.arch, prof.machine, prof.cpu, prof.fixed_soc) == ("arm64", "raspi4b", "cortex-a72", True)
    assert prof.dtb == "bcm2711-rpi-4-b.dtb" and prof.net_model == "usb-net"  # no GENET in QEMU's model
    assert prof.features() == profiles.load("virt64").features("cortex-a72")


def test_a_machine_seen_broken_is_refused_up_to_the_release_measured_and_let_through_after_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 not installed (make deps)")
    assert profiles.qemu_release("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)") == (10, 0, 2)
    assert profiles.qemu_release("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18+b3)") == (7, 2, 19)
    assert profiles.qemu_release("no version here") is None
    pi3 = profiles.load("raspi3b")  # a machine every supported QEMU has; the table entry is this test's
    monkeypatch.setitem(profiles.MACHINE_BROKEN, "raspi3b", ((99, 0, 0), "it hangs"))
    with pytest.raises(ToolMissing, match=r"profile raspi3b cannot boot.*it hangs \(measured on QEMU 99\.0\.0\)"):
        profiles.check_machine(pi3)
    monkeypatch.setitem(profiles.MACHINE_BROKEN, "raspi3b", ((1, 0, 0), "it hangs"))
    profiles.check_machine(pi3)
    assert "newer than the last one measured" in caplog.text
