"""The 64-bit base end to end: Debian trixie arm64 built from Debian's packages, its boot partition checked for the
Pi 4, and `pibake bake` for the Pi 4 on it as a user runs it: pibake's wheel in a fresh venv, an ONNX model of the
test's own (not the car model: another format, input size and class count), `pibake init` then `pibake bake` in a
directory with no checkout; booted on qemu-system-aarch64's virt board with the Pi 4's own core (Cortex-A72),
onnxruntime installed from its lock into a venv, the model's outputs on the emulated Pi compared with this machine's
(onnxruntime on both), the login user ops (not pi), a locale and a Wi-Fi
network written the Debian way (locales, wpasupplicant and the Pi's Wi-Fi firmware from the mirror at bake time),
the card image finalized. One cold boot serves it all (a user playbook of the project brings the guest's
/proc/cpuinfo back, so the core is read from the guest itself). Then `pibake demo` from the same wheel: the bundled
example (the car model) baked for a Pi 3 on its own core (Cortex-A53) with LiteRT from its lock."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from pibake.emulate import profiles
from tests.conftest import REPO, run_cli
from tests.integration import wheel
from tests.integration.wheel import run

pytestmark = pytest.mark.emulator

# MIDR_EL1's part number, which /proc/cpuinfo prints as "CPU part" (Arm's Cortex-A72 TRM: 0xD08).
CORTEX_A72_PART = "0xd08"

GUEST_FACTS = """\
---
- name: Bring the guest's CPU and Python facts back to the controller
  hosts: raspberry_pi
  gather_facts: false
  tasks:
    - name: Read them
      ansible.builtin.shell: |
        id -un; uname -m; dpkg --print-architecture
        /opt/pibake/venv/bin/python -c 'import sys; print(sys.version_info[:2])'
        cat /proc/cpuinfo
      changed_when: false
      register: facts
    - name: Write them beside the project
      delegate_to: localhost
      ansible.builtin.copy:
        content: "{{ facts.stdout }}"
        dest: "{{ playbook_dir }}/guest-facts.txt"
        mode: "0644"
    - name: Read what system.locale and [system.wifi] left
      become: true
      ansible.builtin.shell: |
        dpkg-query -W -f='${Package} ${db:Status-Status}\\n' locales wpasupplicant firmware-brcm80211 wireless-regdb
        echo "locales: $(locale -a | tr '\\n' ' ')"
        cat /etc/default/locale /etc/modprobe.d/pibake-wifi-country.conf
        echo "wlan0 mode: $(stat -c '%a %U' /etc/network/interfaces.d/wlan0)"
        cat /etc/network/interfaces.d/wlan0
        ls /lib/firmware/regulatory.db /lib/firmware/brcm/brcmfmac43455-sdio.bin
        echo "preprocessing.json: $(cat /opt/pibake/model/current/preprocessing.json)"
        journalctl -b -u pibake-inference.service --no-pager -o cat | grep 'preprocessing of POST'
      changed_when: false
      register: system
    - name: Write those beside the project
      delegate_to: localhost
      ansible.builtin.copy:
        content: "{{ system.stdout }}"
        dest: "{{ playbook_dir }}/guest-system.txt"
        mode: "0644"
"""
# The Wi-Fi network the project names: the card must carry the key derived from the passphrase (IEEE 802.11i's
# PBKDF2, as wpa_passphrase), never the passphrase itself.
WIFI_SSID = "pibake-lab"
WIFI_PASSPHRASE = "pibake test passphrase 7f3a"


def test_the_arm64_image_would_boot_a_pi4_and_not_a_pi2(arm64_image: Path) -> None:
    res = run_cli(["image", "check", str(arm64_image)])
    assert res.code == 0, res.err
    res = run_cli(["image", "check", str(arm64_image), "--board", "pi2"])
    assert res.code != 0
    assert "arm_64bit=1" in res.err and "Cortex-A7 cannot run one" in res.err


def test_a_32_bit_profile_refuses_the_arm64_image(arm64_image: Path) -> None:
    res = run_cli(["emulate", "start", str(arm64_image), "--profile", "virt", "--name", "it-arm64-wrong", "--cold"])
    assert res.code != 0
    assert "64-bit (arm64) image" in res.err and "--profile virt64" in res.err


def test_bake_from_the_installed_wheel_for_a_pi4_on_the_64_bit_base(
    arm64_image: Path, wheel_venv: Path, tmp_path: Path, stop_guests: list[str]
) -> None:
    # A user's own model and project, from pibake's wheel in a fresh venv, in a directory with no checkout in sight.
    proj = tmp_path / "tiny"
    env = wheel.outside(proj, wheel_venv)
    wheel.tiny_onnx_model(proj / "tiny.onnx", size=24, classes=4)
    pibake = str(wheel_venv / "bin" / "pibake")
    assert "it loads" in run([pibake, "init", "--model", "tiny.onnx"], cwd=proj, env=env)
    text = (proj / "pibake.toml").read_text()
    for default, chosen in (
        ('# board = "pi3b-plus"', 'board = "pi4"'),
        ('# base = "debian-trixie-arm64"', 'base = "debian-trixie-arm64"'),
        ("# playbooks = []", 'playbooks = ["guest-facts.yml"]'),
        ('# locale = "C.UTF-8"', 'locale = "en_GB.UTF-8"'),
        # Not pi: prepare adds the account, and the boot and Ansible log in as it.
        ('# user = "pi"', 'user = "ops"'),
        ("# [system.wifi]", "[system.wifi]"),
        ('# country = "GB"', 'country = "GB"'),
        ('# ssid = "my-network"', f'ssid = "{WIFI_SSID}"'),
        ('# psk = "correct horse battery staple"', f'psk = "{WIFI_PASSPHRASE}"'),
        # Not the default preprocessing: the Pi must read it from the card (preprocessing.json), as the host does.
        ("# mean = 0.0", "mean = [0.1, 0.2, 0.3]"),
        ("# std = 1.0", "std = [0.5, 0.25, 0.5]"),
        ('# channel_order = "rgb"', 'channel_order = "bgr"'),
    ):
        assert default in text, default
        text = text.replace(default, chosen)
    (proj / "pibake.toml").write_text(text)
    (proj / "guest-facts.yml").write_text(GUEST_FACTS)

    stop_guests.append("it-bake-arm64")
    res = subprocess.run(
        [pibake, "bake", str(proj), "--name", "it-bake-arm64"],
        cwd=proj,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    report_md = proj / "build" / "report.md"
    assert res.returncode == 0, res.stderr[-4000:] + (report_md.read_text() if report_md.exists() else "(no report)")
    report = report_md.read_text()

    finished = proj / "build" / "tiny.img"
    for suffix in ("", ".sha256", ".bmap"):
        assert finished.with_name(finished.name + suffix).is_file(), suffix
    assert "virt64" in report and "cortex-a72" in report
    assert "onnxruntime 1.28.0" in report
    assert "onnxruntime-1.28.0-cp313-cp313-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl" in report
    # Both samples, each compared with the host's output, none off tolerance.
    assert "PASSED: all 2 samples within tolerance" in report
    assert "FAILED" not in report
    # The service on the Pi preprocessed them as the project says too: its answer is the host's top class.
    sample_rows = ("| amber.png |", "| dark.png |")
    rows = [ln.strip("| ").split(" | ") for ln in report.splitlines() if ln.startswith(sample_rows)]
    assert len(rows) == 2, report
    for row in rows:
        host_label, host_p = row[1].split(", ")[0].split()
        service_label, service_p = row[5].split()
        assert service_label == host_label and abs(float(service_p) - float(host_p)) <= 1e-5, row

    login, machine, arch, python, *cpuinfo = (proj / "guest-facts.txt").read_text().splitlines()
    assert (login, machine, arch, python) == ("ops", "aarch64", "arm64", "(3, 13)")
    parts = {ln.split(":")[1].strip() for ln in cpuinfo if ln.startswith("CPU part")}
    assert parts == {CORTEX_A72_PART}  # every core of the guest is the Pi 4's Cortex-A72
    features = next(ln for ln in cpuinfo if ln.startswith("Features")).split(":", 1)[1].split()
    assert set(profiles.load("virt64").features("cortex-a72")) <= set(features)

    # system.locale and [system.wifi], as the card has them (no Wi-Fi device is emulated: wlan0 cannot associate).
    system = (proj / "guest-system.txt").read_text()
    for package in ("locales", "wpasupplicant", "firmware-brcm80211", "wireless-regdb"):
        assert f"{package} installed" in system, system
    assert "en_GB.utf8" in system and "LANG=en_GB.UTF-8" in system
    assert "options cfg80211 ieee80211_regdom=GB" in system
    # [model.preprocessing] on the card, and the service using it.
    prep = json.loads(system.split("preprocessing.json: ", 1)[1].splitlines()[0])
    assert (prep["mean"], prep["std"], prep["channel_order"]) == ([0.1, 0.2, 0.3], [0.5, 0.25, 0.5], "bgr"), prep
    assert "preprocessing of POST /predict images: (pixel * 0.00392157 - [0.1, 0.2, 0.3]) / [0.5, 0.25, 0.5], bgr" in (
        system
    ), system
    assert "wlan0 mode: 600 root" in system
    psk = hashlib.pbkdf2_hmac("sha1", WIFI_PASSPHRASE.encode(), WIFI_SSID.encode(), 4096, 32).hex()
    assert f"wpa-ssid {WIFI_SSID}" in system and f"wpa-psk {psk}" in system
    assert WIFI_PASSPHRASE not in system and WIFI_PASSPHRASE not in res.stdout + res.stderr
    with finished.open("rb") as f:
        tail = b""
        while chunk := f.read(64 << 20):
            assert WIFI_PASSPHRASE.encode() not in tail + chunk, "the passphrase is on the card"
            tail = chunk[-64:]

    res_check = run_cli(["image", "check", str(finished)])
    assert res_check.code == 0, res_check.err
    manifest = json.loads(finished.with_name(finished.name + ".manifest.json").read_text())
    assert manifest["os"].startswith("Debian GNU/Linux 13")
    names = {(d["name"].lower().replace("_", "-"), d["version"]) for d in manifest["python"]}
    assert ("onnxruntime", "1.28.0") in names  # from the runtime's venv


def test_demo_from_the_installed_wheel_bakes_the_bundled_example_with_litert(
    arm64_image: Path, wheel_venv: Path, tmp_path: Path, stop_guests: list[str]
) -> None:
    # `pibake demo` as a new user runs it: the example the wheel carries (the car model), the default base for a
    # Pi 3 (trixie arm64), LiteRT from its lock, the Pi 3's own core; from a directory with no checkout.
    work = tmp_path / "demo"
    env = wheel.outside(work, wheel_venv)
    pibake = str(wheel_venv / "bin" / "pibake")
    stop_guests.append("pibake-demo")
    out = work / "build" / "demo.img"
    res = subprocess.run(
        [pibake, "demo", "--board", "pi3", "-o", str(out)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    report_md = out.with_name("report.md")
    assert res.returncode == 0, res.stderr[-4000:] + (report_md.read_text() if report_md.exists() else "(no report)")
    report = report_md.read_text()
    assert "virt64" in report and "cortex-a53" in report
    assert "ai-edge-litert 2.3.0" in report
    assert "ai_edge_litert-2.3.0-cp313-cp313-manylinux_2_27_aarch64.whl" in report
    samples = sorted(p.name for p in (REPO / "examples" / "car" / "model" / "samples").iterdir())
    assert f"PASSED: all {len(samples)} samples within tolerance" in report and "FAILED" not in report
    for name in samples:
        assert f"| {name} |" in report, name
    for suffix in (".sha256", ".bmap"):
        assert out.with_name(out.name + suffix).is_file(), suffix
    res_check = run_cli(["image", "check", str(out), "--board", "pi3"])
    assert res_check.code == 0, res_check.err
