"""The [system] settings bake carries to a Debian base's card: the locale and Wi-Fi (playbooks/bake_system.yml and
what pibake.bake passes it). No guest: the Python side, the playbook's shape, and its locale expressions run by
ansible-playbook on this machine."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pibake import bake, project
from tests.conftest import REPO, local_image, run_local_play

PLAYBOOK = REPO / "playbooks" / "bake_system.yml"
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")


@pytest.fixture(scope="module")
def car() -> project.Project:
    return project.load(REPO / "examples" / "car")


def _with(proj: project.Project, **system: object) -> project.Project:
    return dataclasses.replace(proj, system=dataclasses.replace(proj.system, **system))  # type: ignore[arg-type]


def _tasks() -> list[dict[str, object]]:
    """The play's tasks, those inside a block in their place."""
    (play,) = yaml.safe_load(PLAYBOOK.read_text())
    return [inner for task in play["tasks"] for inner in task.get("block", [task])]


def _task(name: str) -> dict[str, object]:
    (task,) = [t for t in _tasks() if str(t["name"]).startswith(name)]
    return task


@pytest.mark.parametrize(
    ("passphrase", "ssid", "key"),
    [
        # IEEE 802.11i-2004, H.4.3, the PSK test vectors; wpa_passphrase(8) prints the same.
        ("password", "IEEE", "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"),
        ("ThisIsAPassword", "ThisIsASSID", "0dc0d6eb90555ed6419756b9a15ec3e3209b63df707dd508d14581f8982721af"),
    ],
)
def test_the_key_is_wpa_passphrases(passphrase: str, ssid: str, key: str) -> None:
    assert bake.wpa_psk(passphrase, ssid) == key


def test_a_64_hex_digit_psk_is_already_the_key() -> None:
    key = "F42C6FC52DF0EBEF9EBB4B90B38A5F902E83FE1B135A70E23AED762E9710A12E"
    assert bake.wpa_psk(key, "IEEE") == key.lower()


def test_the_stanza_carries_the_key_not_the_passphrase() -> None:
    stanza = bake.ifupdown_wifi_stanza(project.WiFi("GB", "IEEE", "password"))
    assert stanza == (
        "allow-hotplug wlan0\n"
        "iface wlan0 inet dhcp\n"
        "    wpa-ssid IEEE\n"
        "    wpa-psk f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e\n"
    )
    assert "password" not in stanza


def test_an_open_network_takes_no_key() -> None:
    assert bake.ifupdown_wifi_stanza(project.WiFi("DE", "Café Gäste", None)) == (
        "allow-hotplug wlan0\niface wlan0 inet dhcp\n    wpa-ssid Café Gäste\n    wpa-key-mgmt NONE\n"
    )


def test_bake_passes_the_locale_and_the_wifi_and_never_the_passphrase(car: project.Project, tmp_path: Path) -> None:
    plain = bake.provision_vars(car, tmp_path, "v1")
    assert plain["bake_locale"] == "C.UTF-8" and plain["bake_wifi_enabled"] is False
    assert "bake_wifi_interfaces" not in plain

    proj = _with(car, locale="en_GB.UTF-8", wifi=project.WiFi("GB", "Lab net", "correct horse"))
    extra = bake.provision_vars(proj, tmp_path, "v1")
    assert extra["bake_locale"] == "en_GB.UTF-8"
    assert extra["bake_wifi_enabled"] is True and extra["bake_wifi_country"] == "GB"
    assert extra["bake_wifi_interface"] == "wlan0"
    assert extra["bake_wifi_packages"] == ["wpasupplicant", "firmware-brcm80211", "wireless-regdb"]
    assert extra["bake_wifi_interfaces"] == bake.ifupdown_wifi_stanza(proj.system.wifi)  # type: ignore[arg-type]
    assert f"wpa-psk {bake.wpa_psk('correct horse', 'Lab net')}\n" in str(extra["bake_wifi_interfaces"])
    assert "correct horse" not in json.dumps(extra)  # the vars file bake writes holds the key only


def test_the_debian_bases_take_a_locale_and_wifi(car: project.Project) -> None:
    wifi = project.WiFi("GB", "Lab net", "correct horse")
    for base, arch in (
        ("debian-bullseye", "armhf"),
        ("debian-bookworm-armhf", "armhf"),
        ("debian-trixie-arm64", "arm64"),
    ):
        proj = dataclasses.replace(car, target=dataclasses.replace(car.target, base=base, arch=arch))
        assert bake.unsupported(_with(proj, locale="de_DE@euro", wifi=wifi)) == [], base
        assert bake.unsupported(_with(proj, wifi=project.WiFi("GB", "open", None))) == [], base


@pytest.mark.parametrize(
    ("ssid", "says"),
    [
        ("lab\nnet", "control character"),
        (" lab", "space"),
        ("lab ", "space"),
        ("lab\\", "backslash"),
        ('"lab"', "double quotes"),
    ],
)
def test_an_ssid_ifupdown_cannot_carry_is_refused(car: project.Project, ssid: str, says: str) -> None:
    (problem,) = bake.unsupported(_with(car, wifi=project.WiFi("GB", ssid, None)))
    assert problem.startswith("system.wifi.ssid: ") and says in problem


@pytest.mark.parametrize("board", ["pi3", "pi3b-plus", "pi-zero-2", "pi4"])
def test_wifi_on_a_board_with_wifi_is_taken(car: project.Project, board: str) -> None:
    proj = dataclasses.replace(car, target=dataclasses.replace(car.target, board=board))
    assert bake.unsupported(_with(proj, wifi=project.WiFi("GB", "lab", None))) == []


def test_wifi_on_a_board_without_it_is_refused_with_the_reason(car: project.Project) -> None:
    proj = dataclasses.replace(car, target=dataclasses.replace(car.target, board="pi2"))
    assert bake.unsupported(proj) == []
    (problem,) = bake.unsupported(_with(proj, wifi=project.WiFi("GB", "lab", None)))
    assert problem.startswith("system.wifi: target.board = 'pi2' (Raspberry Pi 2 Model B v1.1) has no Wi-Fi")


def _local(car: project.Project, image: Path) -> project.Project:
    return dataclasses.replace(
        car, target=dataclasses.replace(car.target, base=str(image), base_kind="image", base_image=image, arch=None)
    )


def test_wifi_on_a_local_image_goes_where_its_network_is_configured(car: project.Project, tmp_path: Path) -> None:
    wifi = project.WiFi("GB", "lab", "correct horse")
    nm = _local(car, local_image(tmp_path / "nm.img", "bookworm", "armhf", packages=("network-manager", "ifupdown")))
    ifupdown = _local(car, local_image(tmp_path / "ifupdown.img", "bookworm", "armhf", packages=("ifupdown",)))
    neither = _local(car, local_image(tmp_path / "dhcpcd.img", "bookworm", "armhf", packages=("dhcpcd5",)))
    assert [bake.wifi_method(p) for p in (nm, ifupdown, neither)] == ["networkmanager", "ifupdown", None]
    assert bake.unsupported(_with(nm, wifi=wifi)) == []
    assert bake.unsupported(_with(ifupdown, wifi=wifi)) == []
    assert bake.unsupported(_with(neither, locale="en_GB.UTF-8")) == []  # the locale is plain Debian anywhere
    (problem,) = bake.unsupported(_with(neither, wifi=wifi))
    assert problem.startswith("system.wifi: the local image configures its network with neither NetworkManager")
    extra = bake.provision_vars(_with(nm, wifi=wifi), tmp_path, "v1")
    assert extra["bake_wifi_method"] == "networkmanager" and extra["bake_wifi_interfaces"] == ""
    assert extra["bake_wifi_connection"] == bake.networkmanager_wifi_connection(wifi)
    assert "correct horse" not in json.dumps(extra)


def test_raspberry_pi_os_from_bookworm_on_takes_wifi_through_networkmanager(car: project.Project) -> None:
    wifi = project.WiFi("GB", "lab", None)
    for base, method in (("trixie-arm64-lite", "networkmanager"), ("bookworm-armhf-lite", "networkmanager")):
        proj = dataclasses.replace(car, target=dataclasses.replace(car.target, base=base, base_kind="raspios"))
        assert bake.wifi_method(proj) == method
        assert bake.unsupported(_with(proj, wifi=wifi)) == [], base
    old = dataclasses.replace(
        car, target=dataclasses.replace(car.target, base="bullseye-armhf-lite", base_kind="raspios")
    )
    assert bake.wifi_method(old) is None
    (problem,) = bake.unsupported(_with(old, wifi=wifi))
    assert "Raspberry Pi OS before bookworm configures its network with neither" in problem and "dhcpcd" in problem


def test_the_networkmanager_keyfile_carries_the_key_not_the_passphrase() -> None:
    import configparser

    text = bake.networkmanager_wifi_connection(project.WiFi("GB", "Lab net", "correct horse"))
    keyfile = configparser.ConfigParser(interpolation=None)
    keyfile.read_string(text)
    assert dict(keyfile["connection"]) == {
        "id": "pibake-wifi",
        "uuid": keyfile["connection"]["uuid"],
        "type": "wifi",
        "interface-name": "wlan0",
        "autoconnect": "true",
    }
    assert (keyfile["wifi"]["mode"], keyfile["wifi"]["ssid"]) == ("infrastructure", "Lab net")
    assert dict(keyfile["wifi-security"]) == {"key-mgmt": "wpa-psk", "psk": bake.wpa_psk("correct horse", "Lab net")}
    assert keyfile["ipv4"]["method"] == keyfile["ipv6"]["method"] == "auto"
    assert "correct horse" not in text
    assert text == bake.networkmanager_wifi_connection(project.WiFi("GB", "Lab net", "correct horse"))  # same uuid
    open_net = bake.networkmanager_wifi_connection(project.WiFi("GB", "open", None))
    assert "[wifi-security]" not in open_net and "psk" not in open_net
    assert "ssid=back\\\\slash\n" in bake.networkmanager_wifi_connection(project.WiFi("GB", "back\\slash", None))


@pytest.mark.parametrize(
    ("ssid", "says"), [("lab\nnet", "control character"), (" lab", "space"), ("lab;net", "semicolon")]
)
def test_an_ssid_a_networkmanager_keyfile_cannot_carry_is_refused(car: project.Project, ssid: str, says: str) -> None:
    proj = dataclasses.replace(
        car, target=dataclasses.replace(car.target, base="trixie-arm64-lite", base_kind="raspios")
    )
    (problem,) = bake.unsupported(_with(proj, wifi=project.WiFi("GB", ssid, None)))
    assert problem.startswith("system.wifi.ssid: ") and says in problem


def test_the_tasks_that_carry_the_key_log_nothing_and_keep_it_owner_only() -> None:
    carrying = [
        t for t in _tasks() if "bake_wifi_interfaces" in json.dumps(t) or "bake_wifi_connection" in json.dumps(t)
    ]
    assert len(carrying) == 2 and all(t.get("no_log") is True for t in carrying)
    for task in carrying:
        args = task["ansible.builtin.copy"]
        assert isinstance(args, dict)
        assert args["mode"] == "0600" and args["owner"] == "root"
    ifupdown, nm = carrying
    assert ifupdown["ansible.builtin.copy"]["dest"] == "/etc/network/interfaces.d/{{ bake_wifi_interface }}"  # type: ignore[index]
    assert "bake_wifi_method == 'ifupdown'" in str(ifupdown["when"])
    assert nm["ansible.builtin.copy"]["dest"] == "{{ bake_wifi_connection_path }}"  # type: ignore[index]
    assert "bake_wifi_method == 'networkmanager'" in str(nm["when"])
    regdom = _task("Set the Wi-Fi regulatory country")["ansible.builtin.copy"]
    assert isinstance(regdom, dict)
    assert "options cfg80211 ieee80211_regdom={{ bake_wifi_country }}" in regdom["content"]


def test_ansible_accepts_the_playbook() -> None:
    res = subprocess.run(
        [ANSIBLE_PLAYBOOK, "--syntax-check", "-i", "localhost,", str(PLAYBOOK)],
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr


SUPPORTED = "de_DE ISO-8859-1\nde_DE.UTF-8 UTF-8\nde_DE@euro ISO-8859-15\nen_GB ISO-8859-1\nen_GB.UTF-8 UTF-8\n"


# (system.locale, `locale -a` on the Pi, the SUPPORTED line the playbook should find, whether it runs locale-gen)
LOCALE_CASES = [
    ("en_GB.UTF-8", ["C", "C.utf8", "POSIX"], "en_GB.UTF-8 UTF-8", True),
    ("en_GB.UTF-8", ["C", "C.utf8", "en_GB.utf8", "POSIX"], "en_GB.UTF-8 UTF-8", False),  # a second run
    ("de_DE@euro", ["C.utf8"], "de_DE@euro ISO-8859-15", True),
    ("en_GB", ["en_GB.utf8"], "en_GB ISO-8859-1", True),  # en_GB is not en_GB.UTF-8
    ("en_US.UTF-8", ["C.utf8"], "", True),  # not in SUPPORTED: the playbook's assert refuses it
]


def test_the_locale_is_found_in_supported_and_generated_once(tmp_path: Path) -> None:
    # The playbook's own expressions, with SUPPORTED and `locale -a` as the Pi would give them, on this machine: one
    # play a case, in one ansible-playbook run.
    find = {k: v for k, v in _task("Find the locale's line in SUPPORTED").items() if k != "when"}
    when = _task("Generate the locale")["when"]
    assert isinstance(when, str)
    plays = [
        {
            "name": f"The locale expressions of bake_system.yml, case {n}",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {
                "bake_locale": locale,
                "bake_supported": {"content": base64.b64encode(SUPPORTED.encode()).decode()},
                "bake_generated": {"stdout_lines": generated},
            },
            "tasks": [
                find,
                {
                    "name": "Write what they decided",
                    "ansible.builtin.copy": {
                        "content": "{{ {'entry': bake_locale_entry, 'generate': " + when + "} | to_json }}",
                        "dest": str(tmp_path / f"{n}.json"),
                        "mode": "0644",
                    },
                },
            ],
        }
        for n, (locale, generated, _, _) in enumerate(LOCALE_CASES)
    ]
    book = tmp_path / "locale.yml"
    book.write_text(yaml.safe_dump(plays, sort_keys=False))
    res = run_local_play(book, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    for n, (locale, _, entry, generate) in enumerate(LOCALE_CASES):
        assert json.loads((tmp_path / f"{n}.json").read_text()) == {"entry": entry, "generate": generate}, locale


# NetworkManager's own keyfile reader (libnm's nm_keyfile_read, through its GObject introspection; Debian's
# gir1.2-nm-1.0 and python3-gi, which `make deps` installs): the daemon reads system-connections with it.
NM_READ = """
import json, sys
import gi
gi.require_version("NM", "1.0")
from gi.repository import GLib, NM
data = sys.stdin.read()
kf = GLib.KeyFile()
kf.load_from_data(data, len(data.encode()), GLib.KeyFileFlags.NONE)
conn = NM.keyfile_read(kf, "/etc/NetworkManager/system-connections", NM.KeyfileHandlerFlags.NONE, None, None)
conn.verify()
wifi, sec, ip4 = conn.get_setting_wireless(), conn.get_setting_wireless_security(), conn.get_setting_ip4_config()
print(json.dumps({
    "id": conn.get_id(), "type": conn.get_connection_type(), "interface": conn.get_interface_name(),
    "autoconnect": conn.get_setting_connection().get_autoconnect(), "ssid": wifi.get_ssid().get_data().decode(),
    "mode": wifi.get_mode(), "key_mgmt": sec.get_key_mgmt() if sec else None, "psk": sec.get_psk() if sec else None,
    "ipv4": ip4.get_method(),
}))
"""


@pytest.mark.parametrize(
    ("ssid", "psk"), [("Lab net", "correct horse"), ("open", None), ("back\\slash", "0123456789" * 6 + "abcd")]
)
def test_networkmanager_reads_the_keyfile_as_bake_means_it(ssid: str, psk: str | None) -> None:
    system_python = "/usr/bin/python3"
    probe = subprocess.run([system_python, "-c", "import gi; gi.require_version('NM', '1.0')"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("libnm's introspection data is not installed (apt install gir1.2-nm-1.0 python3-gi)")
    text = bake.networkmanager_wifi_connection(project.WiFi("GB", ssid, psk))
    res = subprocess.run(
        [system_python, "-c", NM_READ], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {
        "id": "pibake-wifi",
        "type": "802-11-wireless",
        "interface": "wlan0",
        "autoconnect": True,
        "ssid": ssid,
        "mode": "infrastructure",
        "key_mgmt": "wpa-psk" if psk else None,
        "psk": bake.wpa_psk(psk, ssid) if psk else None,
        "ipv4": "auto",
    }
