"""Bootable images shaped like Raspberry Pi OS before cloud-init: a first boot by init= or by Imager's firstrun.sh.

Raspberry Pi's images cannot be downloaded here, so each fixture is the Debian-built trixie arm64 base
(`make image-arm64`) with Raspberry Pi OS's arm64 boot partition (as_raspios_arm64_boot: pi-gen's config.txt,
which names no kernel=, and the firmware's kernel8.img and initramfs8; its kernel has no virtio drivers, so the
emulated boot runs pibake's virt64 kernel as `pibake bake` does) and what makes Raspberry Pi OS's first boot what it
is before trixie (pi-gen's stage2 and Raspberry Pi Imager's customisation):

- ``init_resize``: bullseye before 2022-09, cmdline.txt ending in ``init=/usr/lib/raspi-config/init_resize.sh``;
- ``firstboot``: bullseye 2022-09 on and bookworm, ``init=/usr/lib/raspberrypi-sys-mods/firstboot``;
- ``firstrun``: a bookworm card that Raspberry Pi Imager customised: firstboot's init= and, after it,
  ``systemd.run=/boot/firmware/firstrun.sh systemd.run_success_action=reboot
  systemd.unit=kernel-command-line.target``, with Imager's firstrun.sh on the boot partition.

Each also carries userconf-pi (its ``userconf`` program and userconfig.service, which read boot:/userconf.txt),
raspberrypi-sys-mods' sshswitch.service (boot:/ssh turns SSH on), ssh.service disabled and no key for pi (the
first user, uid 1000), and /etc/rpi-issue: only what ``pibake image prepare`` writes can give a login.

Raspberry Pi's packages (userconf-pi, raspberrypi-sys-mods, raspi-config) come from its own archive, which
cannot be reached here, so those programs are stand-ins written from their documented behaviour, at their real
paths. The init= programs and firstrun.sh end the boot as the real ones do (they reboot, and QEMU runs with
-no-reboot, so the guest stops): an emulated boot that ran one never answers SSH. The rest is the real system:
Debian's systemd and OpenSSH.
"""

from __future__ import annotations

from pathlib import Path

from pibake.boards.firmware import parse_config_txt
from pibake.disk.ext4 import ExtFs, MakeDir, Remove, Symlink, WriteFile
from pibake.disk.fat import FatFs
from pibake.disk.sparse import copy_file

MECHANISMS = ("init_resize", "firstboot", "firstrun")

# pi-gen's stage1 config.txt for the arm64 images (bookworm and trixie): no kernel=, so the firmware loads kernel8.img,
# and auto_initramfs=1 its initramfs8.
RASPIOS_ARM64_CONFIG_TXT = """\
# For more options and information see
# http://rptl.io/configtxt
dtparam=audio=on
camera_auto_detect=1
display_auto_detect=1
auto_initramfs=1
dtoverlay=vc4-kms-v3d
max_framebuffers=2
disable_fw_kms_setup=1
arm_64bit=1
disable_overscan=1
arm_boost=1

[cm4]
otg_mode=1

[all]
"""


def as_raspios_arm64_boot(image: Path) -> None:
    """Give IMAGE (a copy of the trixie arm64 base) Raspberry Pi OS's arm64 boot files: RASPIOS_ARM64_CONFIG_TXT, and
    the kernel and initramfs its config.txt named renamed to what the firmware loads without kernel= (kernel8.img,
    initramfs8). The device trees stay: the Pi 4's is bcm2711-rpi-4-b.dtb under both names."""
    boot = FatFs.partition(image, 1)
    config = parse_config_txt(boot.read_text("config.txt") or "")
    for old, new in ((config["kernel"], "kernel8.img"), (config["initramfs"], "initramfs8")):
        data = boot.read(old)
        assert data is not None, f"{image}: no {old} on the boot partition"
        boot.write(new, data)
        boot.remove(old)
    boot.write("config.txt", RASPIOS_ARM64_CONFIG_TXT.encode())


INIT_RESIZE = "/usr/lib/raspi-config/init_resize.sh"
FIRSTBOOT = "/usr/lib/raspberrypi-sys-mods/firstboot"
FIRSTRUN_WORDS = (
    "systemd.run=/boot/firmware/firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target"
)
CMDLINE_TAIL = {
    "init_resize": f"quiet init={INIT_RESIZE}",
    "firstboot": f"quiet init={FIRSTBOOT}",
    "firstrun": f"quiet init={FIRSTBOOT} {FIRSTRUN_WORDS}",
}

RPI_ISSUE = {
    "init_resize": "Raspberry Pi reference 2022-04-04\n",
    "firstboot": "Raspberry Pi reference 2024-11-19\n",
    "firstrun": "Raspberry Pi reference 2024-11-19\n",
}

# As init=, the program is PID 1 on the root the initramfs mounted (read-only, /proc moved there). The real ones grow
# the root partition, take their init= out of cmdline.txt and reboot; this one only reboots.
INIT_STAND_IN = """\
#!/bin/sh
# The fixture's stand-in for {name}: the real one grows the root partition, then reboots. This one reboots at once.
[ -e /proc/sysrq-trigger ] || mount -t proc proc /proc
echo b > /proc/sysrq-trigger
"""

# Raspberry Pi Imager's firstrun.sh (bookworm) sets the user, hostname, SSH and Wi-Fi it was given, removes itself and
# its words from cmdline.txt, and systemd reboots (systemd.run_success_action=reboot).
FIRSTRUN_SH = """\
#!/bin/bash
# The fixture's stand-in for Raspberry Pi Imager's firstrun.sh: its settings would go here.
set +e
rm -f /boot/firmware/firstrun.sh
sed -i 's| systemd.run.*||g' /boot/firmware/cmdline.txt
exit 0
"""

# userconf-pi's userconf NAME HASH: the uid-1000 user renamed to NAME (its group and home with it), HASH its password.
USERCONF = """\
#!/bin/sh
# The fixture's stand-in for userconf-pi's userconf: rename the first user (uid 1000), set its password hash.
set -e
NEWNAME="$1"
PASS="$2"
FIRSTUSER="$(getent passwd 1000 | cut -d: -f1)"
FIRSTGROUP="$(getent group 1000 | cut -d: -f1)"
if [ "$FIRSTUSER" != "$NEWNAME" ]; then
    usermod -l "$NEWNAME" "$FIRSTUSER"
    usermod -m -d "/home/$NEWNAME" "$NEWNAME"
    groupmod -n "$NEWNAME" "$FIRSTGROUP"
    for f in /etc/sudoers.d/*; do
        [ -f "$f" ] && sed -i "s/^$FIRSTUSER /$NEWNAME /" "$f"
    done
fi
echo "$NEWNAME:$PASS" | chpasswd -e
"""
USERCONF_SERVICE_SH = """\
#!/bin/sh
# The fixture's stand-in for userconf-pi's userconf-service: boot:/userconf.txt (NAME:HASH) applied, then removed.
FILE=/boot/firmware/userconf.txt
[ -f "$FILE" ] || exit 0
LINE="$(head -n 1 "$FILE")"
/usr/lib/userconf-pi/userconf "${LINE%%:*}" "${LINE#*:}"
rm -f "$FILE"
"""
SSHSWITCH_SH = """\
#!/bin/sh
# The fixture's stand-in for raspberrypi-sys-mods' sshswitch: boot:/ssh (or ssh.txt) turns the SSH server on.
if [ -e /boot/firmware/ssh ] || [ -e /boot/firmware/ssh.txt ]; then
    systemctl enable --now --no-block ssh.service
    rm -f /boot/firmware/ssh /boot/firmware/ssh.txt
fi
"""


def _unit(description: str, exec_start: str, order: str) -> str:
    return (
        f"[Unit]\nDescription={description} (pibake's test fixture)\nRequiresMountsFor=/boot/firmware\n{order}\n\n"
        f"[Service]\nType=oneshot\nExecStart={exec_start}\n\n[Install]\nWantedBy=multi-user.target\n"
    )


USERCONFIG_UNIT = _unit(
    "User configuration from the boot partition", "/usr/lib/userconf-pi/userconf-service", "Before=ssh.service"
)
SSHSWITCH_UNIT = _unit(
    "Turn on SSH if /boot/firmware/ssh is present",
    "/usr/lib/raspberrypi-sys-mods/sshswitch",
    "After=userconfig.service",
)
WANTS = "/etc/systemd/system/multi-user.target.wants"


def build(base: Path, dest: Path, mechanism: str) -> Path:
    """Write to DEST a copy of BASE (the trixie arm64 image; sparse, seconds) laid out for MECHANISM (MECHANISMS)."""
    if mechanism not in MECHANISMS:
        raise ValueError(f"{mechanism}: not one of {', '.join(MECHANISMS)}")
    image = copy_file(base, dest)
    as_raspios_arm64_boot(image)
    boot, root = FatFs.partition(image, 1), ExtFs.partition(image, 2)
    cmdline = (boot.read_text("cmdline.txt") or "").split()
    # Raspberry Pi OS's own console words, which prepare turns into the emulated board's.
    kept = [w for w in cmdline if not w.startswith("console=")]
    boot.write(
        "cmdline.txt",
        " ".join(["console=serial0,115200", "console=tty1", *kept, CMDLINE_TAIL[mechanism]]).encode() + b"\n",
    )
    if mechanism == "firstrun":
        boot.write("firstrun.sh", FIRSTRUN_SH.encode())
    passwd = root.read_text("/etc/passwd") or ""
    pi = next(line.split(":") for line in passwd.splitlines() if line.split(":")[2] == "1000")
    home = pi[5]
    root.apply(
        [
            WriteFile("/etc/rpi-issue", RPI_ISSUE[mechanism].encode(), 0o644, 0, 0),
            MakeDir("/usr/lib/raspi-config"),
            WriteFile(INIT_RESIZE, INIT_STAND_IN.format(name="init_resize.sh").encode(), 0o755, 0, 0),
            MakeDir("/usr/lib/raspberrypi-sys-mods"),
            WriteFile(FIRSTBOOT, INIT_STAND_IN.format(name="raspberrypi-sys-mods' firstboot").encode(), 0o755, 0, 0),
            WriteFile("/usr/lib/raspberrypi-sys-mods/sshswitch", SSHSWITCH_SH.encode(), 0o755, 0, 0),
            MakeDir("/usr/lib/userconf-pi"),
            WriteFile("/usr/lib/userconf-pi/userconf", USERCONF.encode(), 0o755, 0, 0),
            WriteFile("/usr/lib/userconf-pi/userconf-service", USERCONF_SERVICE_SH.encode(), 0o755, 0, 0),
            WriteFile("/usr/lib/systemd/system/userconfig.service", USERCONFIG_UNIT.encode(), 0o644, 0, 0),
            WriteFile("/usr/lib/systemd/system/sshswitch.service", SSHSWITCH_UNIT.encode(), 0o644, 0, 0),
            Symlink(f"{WANTS}/userconfig.service", "/usr/lib/systemd/system/userconfig.service"),
            Symlink(f"{WANTS}/sshswitch.service", "/usr/lib/systemd/system/sshswitch.service"),
            # pi-gen's default (ENABLE_SSH=0), and no key: a login comes from prepare or not at all.
            Remove(f"{WANTS}/ssh.service"),
            Remove(f"{home}/.ssh/authorized_keys"),
        ]
    )
    return image
