"""The pure parts of prepare and finalize: tweaks, account files, hosts, keys, sizes, parsers."""

from __future__ import annotations

import pytest
import yaml

from pibake.disk.ext4 import DirEntry, parse_ls_p
from pibake.errors import PibakeError
from pibake.image import finalize, prepare

RASPIOS_CMDLINE = (
    "console=serial0,115200 console=tty1 root=PARTUUID=3a90e54f-02 rootfstype=ext4 fsck.repair=yes rootwait "
    "quiet init=/usr/lib/raspi-config/init_resize.sh\n"
)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFq0XlJ2z1v2dYbW3TtuG2pQ9nqgk7vH0S2r0c3mCk7Q me@host"


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, 1), (2, 2), (3, 4), (2 << 30, 2 << 30), ((2 << 30) + 1, 4 << 30), (348127232, 512 << 20)],
)
def test_next_power_of_two(n: int, expected: int) -> None:
    assert prepare.next_power_of_two(n) == expected


def test_ld_so_preload_tweak_comments_out_libarmmem_only() -> None:
    text = "/usr/lib/arm-linux-gnueabihf/libarmmem-${PLATFORM}.so\n/usr/lib/other.so\n"
    assert prepare.tweak_ld_so_preload(text) == (
        "#/usr/lib/arm-linux-gnueabihf/libarmmem-${PLATFORM}.so\n/usr/lib/other.so\n"
    )
    assert prepare.tweak_ld_so_preload("#/usr/lib/arm-linux-gnueabihf/libarmmem-v7l.so\n") is None
    assert prepare.tweak_ld_so_preload("") is None


def test_cmdline_tweak_for_a_direct_kernel_boot() -> None:
    new = prepare.tweak_cmdline(RASPIOS_CMDLINE, "ttyAMA0")
    assert new == (
        "console=tty1 root=PARTUUID=3a90e54f-02 rootfstype=ext4 fsck.repair=yes rootwait quiet console=ttyAMA0,115200\n"
    )
    # The serial console last, so /dev/console is the serial line the emulator logs.
    assert prepare.tweak_cmdline("console=ttyAMA0,115200 console=tty1 root=/dev/vda2\n", "ttyAMA0") == (
        "console=tty1 root=/dev/vda2 console=ttyAMA0,115200\n"
    )


def test_cmdline_of_a_card_raspberry_pi_imager_customised_boots_without_its_firstrun_script() -> None:
    # A bookworm card as Imager writes it: the first boot resizes (init=), then systemd runs firstrun.sh and reboots.
    imager = (
        "console=serial0,115200 console=tty1 root=PARTUUID=35684e8a-02 rootfstype=ext4 fsck.repair=yes rootwait quiet "
        "init=/usr/lib/raspberrypi-sys-mods/firstboot cfg80211.ieee80211_regdom=GB systemd.run=/boot/firstrun.sh "
        "systemd.run_success_action=reboot systemd.unit=kernel-command-line.target\n"
    )
    assert prepare.tweak_cmdline(imager, "ttyAMA0") == (
        "console=tty1 root=PARTUUID=35684e8a-02 rootfstype=ext4 fsck.repair=yes rootwait quiet "
        "cfg80211.ieee80211_regdom=GB console=ttyAMA0,115200\n"
    )
    # Another systemd.unit is the image's own choice, not Imager's, and stays.
    assert "systemd.unit=multi-user.target" in str(
        prepare.tweak_cmdline("root=/dev/vda2 systemd.unit=multi-user.target systemd.run=/boot/x.sh\n", "ttyAMA0")
    )


def test_cmdline_of_trixie_boots_without_rpi_resizes_word() -> None:
    # pi-gen's trixie cmdline.txt: rpi-resize grows the root on the first boot and takes `resize` out (a change
    # finalize would refuse); an Imager-customised card adds cloud-init's datasource, which stays.
    trixie = (
        "console=serial0,115200 console=tty1 root=PARTUUID=6c586e13-02 rootfstype=ext4 fsck.repair=yes rootwait "
        "resize ds=nocloud;i=rpi-imager-1759400000000\n"
    )
    assert prepare.tweak_cmdline(trixie, "ttyAMA0") == (
        "console=tty1 root=PARTUUID=6c586e13-02 rootfstype=ext4 fsck.repair=yes rootwait "
        "ds=nocloud;i=rpi-imager-1759400000000 console=ttyAMA0,115200\n"
    )
    # Only the whole word: another option that starts with it is the image's own.
    assert "resize=off" in str(prepare.tweak_cmdline("root=/dev/vda2 resize=off\n", "ttyAMA0"))


def test_cloud_init_user_data_is_imagers_keys_as_yaml() -> None:
    text = prepare.cloud_init_user_data(user="alice", password_hash="$6$salt$hash", ssh_pubkey=KEY, hostname=None)
    assert text.startswith("#cloud-config\n# Written by pibake image prepare")
    config = yaml.safe_load(text)
    assert config == {
        "user": {
            "name": "alice",
            "shell": "/bin/bash",
            "lock_passwd": False,
            "hashed_passwd": "$6$salt$hash",
            "ssh_authorized_keys": [KEY],
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
        },
        "runcmd": [["systemctl", "enable", "--now", "ssh"]],
    }
    # No password ("*" is prepare's "keys only"): the account is locked and sshd takes keys only.
    locked = yaml.safe_load(prepare.cloud_init_user_data(user="pi", password_hash="*", ssh_pubkey=KEY, hostname="p1"))
    assert locked["user"]["lock_passwd"] is True and "hashed_passwd" not in locked["user"]
    assert (locked["ssh_pwauth"], locked["hostname"], locked["manage_etc_hosts"]) == (False, "p1", True)
    meta = yaml.safe_load(prepare.cloud_init_meta_data("pibake-0123"))
    assert meta == {"dsmode": "local", "instance-id": "pibake-0123"}


def test_user_data_keys_tell_an_images_own_settings_from_templates_and_pibakes() -> None:
    template = "#cloud-config\n\n# This is the user-data configuration file for cloud-init.\n#hostname: raspberrypi\n"
    assert prepare.user_data_keys(template) == []
    ours = prepare.cloud_init_user_data(user="pi", password_hash=None, ssh_pubkey=KEY, hostname=None)
    assert prepare.user_data_keys(ours) == []  # a finalized pibake image can be prepared again
    assert prepare.user_data_keys("#cloud-config\nusers: [default]\npackages: [htop]\n") == ["packages", "users"]
    with pytest.raises(PibakeError, match="not valid YAML"):
        prepare.user_data_keys("#cloud-config\nusers: [\n")
    with pytest.raises(PibakeError, match="not a cloud-config mapping"):
        prepare.user_data_keys("#cloud-config\n- a list\n")
    # cloud-init's other kinds of user data are refused by name, with what to do.
    for other in ("#!/bin/sh\necho hi\n", "#include\nhttps://x.invalid/a\n", "Content-Type: multipart/mixed\n"):
        with pytest.raises(PibakeError, match=r"provision in pibake\.toml"):
            prepare.user_data_keys(other)


def test_cmdline_already_fit_for_emulation_is_left_alone() -> None:
    debian = "console=ttyAMA0,115200 root=PARTUUID=1234abcd-02 rootfstype=ext4 fsck.repair=yes rootwait net.ifnames=0\n"
    assert prepare.tweak_cmdline(debian, "ttyAMA0") is None


def test_hosts_gets_the_hostname_on_127_0_1_1() -> None:
    hosts = "127.0.0.1\tlocalhost\n::1\t\tlocalhost\n\n127.0.1.1\t\traspberrypi\n"
    assert prepare.with_hostname(hosts, "pitest") == "127.0.0.1\tlocalhost\n::1\t\tlocalhost\n\n127.0.1.1\tpitest\n"
    assert prepare.with_hostname("127.0.0.1 localhost\n", "pitest") == "127.0.0.1 localhost\n127.0.1.1\tpitest\n"


def test_authorized_keys_are_appended_once() -> None:
    assert prepare.with_authorized_key(None, KEY) == KEY + "\n"
    assert prepare.with_authorized_key("ssh-ed25519 AAAAother pibake", KEY) == f"ssh-ed25519 AAAAother pibake\n{KEY}\n"
    # The same key with another comment is the same key.
    assert prepare.with_authorized_key(KEY.rsplit(" ", 1)[0] + " renamed\n", KEY) is None
    with pytest.raises(PibakeError, match="not an OpenSSH public key"):
        prepare.with_authorized_key(None, "hello world")
    with pytest.raises(PibakeError, match="one line"):
        prepare.with_authorized_key(None, KEY + "\n" + KEY)


ACCOUNTS = prepare.Accounts(
    passwd="root:x:0:0:root:/root:/bin/bash\npi:x:1000:1000:,,,:/home/pi:/bin/bash\n",
    shadow="root:*:19653:0:99999:7:::\npi:*:19653:0:99999:7:::\n",
    group="root:x:0:\nadm:x:4:pi\nsudo:x:27:\nvideo:x:44:pi\npi:x:1000:\n",
    gshadow="root:*::\nadm:*::pi\nsudo:*::\nvideo:*::pi\npi:!::\n",
)


def test_add_user_like_useradd() -> None:
    accounts, uid = prepare.add_user(ACCOUNTS, "bob", password_hash="*", groups=("adm", "sudo", "nonexistent"))
    assert uid == 1001
    assert accounts.passwd.endswith("bob:x:1001:1001:,,,:/home/bob:/bin/bash\n")
    assert "\nbob:*:" in accounts.shadow
    assert "adm:x:4:pi,bob\n" in accounts.group and "sudo:x:27:bob\n" in accounts.group
    assert "video:x:44:pi\n" in accounts.group and accounts.group.endswith("bob:x:1001:\n")
    assert accounts.gshadow is not None and "sudo:*::bob\n" in accounts.gshadow
    with pytest.raises(PibakeError, match="exists already"):
        prepare.add_user(accounts, "bob", password_hash="*", groups=())


def test_set_password_hash() -> None:
    shadow = prepare.set_password_hash(ACCOUNTS.shadow, "pi", "$6$salt$hash")
    assert "pi:$6$salt$hash:19653:0:99999:7:::" in shadow
    with pytest.raises(PibakeError, match="no line"):
        prepare.set_password_hash(ACCOUNTS.shadow, "bob", "*")


def test_user_names_follow_userconf_pi() -> None:
    for good in ("pi", "alice", "a-1"):
        assert prepare.USERNAME.match(good)
    for bad in ("Alice", "1pi", "", "a" * 33, "bob smith"):
        assert not prepare.USERNAME.match(bad)


def test_ls_p_lines() -> None:
    assert parse_ls_p("/14/100600/1000/0/x/12/") == DirEntry(14, 0o100600, 1000, 0, "x", 12)
    entry = parse_ls_p("/17/040700/1000/1000/.ssh//")
    assert entry is not None and entry.is_dir and entry.perm == 0o700 and entry.size is None
    assert parse_ls_p("debugfs: ls -p /etc") is None
    assert parse_ls_p("") is None


def test_dpkg_status_keeps_installed_packages_only() -> None:
    status = (
        "Package: libc6\nStatus: install ok installed\nArchitecture: armhf\nVersion: 2.31-13\n"
        "Description: C library\n Status: this line is a description, not a field\n\n"
        "Package: gone\nStatus: deinstall ok config-files\nArchitecture: armhf\nVersion: 1\n\n"
        "Package: adduser\nStatus: install ok installed\nArchitecture: all\nVersion: 3.118\n"
    )
    assert finalize.parse_dpkg_status(status) == [
        {"name": "adduser", "version": "3.118", "architecture": "all"},
        {"name": "libc6", "version": "2.31-13", "architecture": "armhf"},
    ]


def test_metadata_and_tree_digest() -> None:
    meta = "Metadata-Version: 2.1\nName: tflite-runtime\nVersion: 2.11.0\n\nName: not this one\n"
    assert finalize.parse_metadata(meta) == {"name": "tflite-runtime", "version": "2.11.0"}
    a = finalize.tree_digest({"b.txt": "2" * 64, "a.tflite": "1" * 64})
    assert a == finalize.tree_digest({"a.tflite": "1" * 64, "b.txt": "2" * 64})
    assert a != finalize.tree_digest({"a.tflite": "1" * 64})


def test_os_release_parsing() -> None:
    text = 'PRETTY_NAME="Raspbian GNU/Linux 11 (bullseye)"\nID=raspbian\n# comment\n'
    assert prepare.parse_os_release(text) == {"PRETTY_NAME": "Raspbian GNU/Linux 11 (bullseye)", "ID": "raspbian"}
