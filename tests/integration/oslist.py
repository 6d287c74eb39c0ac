"""A Raspberry Pi Imager OS list (os_list_imagingutility_v4.json) shaped like Raspberry Pi's, for tests.

The structure is the published one: an ``imager`` block with Imager's device tags, then ``os_list``,
whose categories nest their entries in ``subitems`` (Ubuntu two levels down), with entries that are
not images at all (a ``subitems_url`` list kept elsewhere, the ``internal://format`` eraser). Raspberry
Pi OS entries carry ``extract_size``, ``extract_sha256``, ``image_download_size``, ``release_date``,
``init_format`` and ``devices`` but no ``image_download_sha256`` (as Raspberry Pi publishes them);
other vendors' entries carry it. Entries that are not served point at Raspberry Pi's and Ubuntu's
addresses with made-up digests: no test downloads them.

``served`` entries are given by the test: URL, and the digests of what the local server sends.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

RPI = "https://downloads.raspberrypi.com"
PI64 = ["pi5-64bit", "pi4-64bit", "pi3-64bit"]
PI32 = ["pi5-32bit", "pi4-32bit", "pi3-32bit", "pi2-32bit", "pi1-32bit"]
DATE = "2026-06-18"
DIR_DATE = "2026-06-19"

DEVICES = [
    {
        "name": "Raspberry Pi 5",
        "tags": ["pi5-64bit", "pi5-32bit"],
        "icon": "https://downloads.raspberrypi.com/imager/icons/RPi_5.png",
        "description": "Raspberry Pi 5, 500 / 500+, and Compute Module 5",
        "matching_type": "exclusive",
        "capabilities": [],
    },
    {
        "name": "Raspberry Pi 4",
        "tags": ["pi4-64bit", "pi4-32bit"],
        "default": False,
        "icon": "https://downloads.raspberrypi.com/imager/icons/RPi_4.png",
        "description": "Raspberry Pi 4 Model B, 400, and Compute Module 4 / 4S",
        "matching_type": "inclusive",
        "capabilities": [],
    },
    {
        "name": "Raspberry Pi 3",
        "tags": ["pi3-64bit", "pi3-32bit"],
        "default": False,
        "icon": "",
        "description": "Raspberry Pi 3 Model A+ / B / B+ and Compute Module 3 / 3+",
        "matching_type": "inclusive",
        "capabilities": [],
    },
    {
        "name": "Raspberry Pi 2",
        "tags": ["pi2-32bit"],
        "default": False,
        "icon": "",
        "description": "Raspberry Pi 2 Model B",
        "matching_type": "inclusive",
        "capabilities": [],
    },
    {
        "name": "Raspberry Pi 1",
        "tags": ["pi1-32bit"],
        "default": False,
        "icon": "",
        "description": "Raspberry Pi 1 Model A / A+ / B / B+ and Compute Module 1",
        "matching_type": "inclusive",
        "capabilities": [],
    },
    {
        "name": "No filtering",
        "tags": [],
        "default": False,
        "description": "Show every possible image",
        "matching_type": "inclusive",
        "capabilities": [],
    },
]


def _digest(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


def raspios_entry(
    name: str,
    description: str,
    kind: str,
    filename: str,
    *,
    devices: list[str],
    init_format: str,
    date: str = DATE,
    dir_date: str = DIR_DATE,
    size: int = 524_875_608,
    extract_size: int = 2_977_955_840,
) -> dict[str, Any]:
    """An entry as Raspberry Pi publishes one, pointing at its own server (never fetched by a test)."""
    return {
        "name": name,
        "description": description,
        "icon": f"{RPI}/{kind}/Raspberry_Pi_OS.png",
        "url": f"{RPI}/{kind}/images/{kind}-{dir_date}/{filename}",
        "extract_size": extract_size,
        "extract_sha256": _digest(filename + "image"),
        "image_download_size": size,
        "release_date": date,
        "init_format": init_format,
        "devices": devices,
        "capabilities": ["rpi_connect"] if init_format == "cloudinit-rpi" else [],
    }


def served_entry(
    name: str,
    url: str,
    *,
    image_sha256: str | None,
    image_size: int | None,
    download_size: int | None,
    download_sha256: str | None = None,
    devices: list[str] | None = None,
    init_format: str = "cloudinit-rpi",
    date: str = DATE,
) -> dict[str, Any]:
    """An entry for what the test's server sends; None leaves a field out, as the list may."""
    entry: dict[str, Any] = {
        "name": name,
        "description": "A port of Debian with no desktop environment",
        "icon": "",
        "url": url,
        "extract_size": image_size,
        "extract_sha256": image_sha256,
        "image_download_size": download_size,
        "image_download_sha256": download_sha256,
        "release_date": date,
        "init_format": init_format,
        "devices": devices if devices is not None else PI32,
        "capabilities": [],
    }
    return {k: v for k, v in entry.items() if v is not None}


def document(served: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole OS list, with SERVED among the Raspberry Pi OS (other) subitems."""
    return {
        "imager": {"latest_version": "2.0.11", "url": "https://www.raspberrypi.com/software/", "devices": DEVICES},
        "os_list": [
            raspios_entry(
                "Raspberry Pi OS (64-bit)",
                "A port of Debian Trixie with the Raspberry Pi Desktop (Recommended)",
                "raspios_arm64",
                f"{DATE}-raspios-trixie-arm64.img.xz",
                devices=PI64,
                init_format="cloudinit-rpi",
                size=1_344_722_248,
                extract_size=6_492_782_592,
            ),
            raspios_entry(
                "Raspberry Pi OS (32-bit)",
                "A port of Debian Trixie with the Raspberry Pi Desktop",
                "raspios_armhf",
                f"{DATE}-raspios-trixie-armhf.img.xz",
                devices=PI32,
                init_format="cloudinit-rpi",
                size=1_295_199_860,
                extract_size=5_721_030_656,
            ),
            {
                "name": "Raspberry Pi OS (other)",
                "description": "Other Raspberry Pi OS based images",
                "icon": "icons/cat_raspberry_pi_os.png",
                "random": False,
                "subitems": [
                    raspios_entry(
                        "Raspberry Pi OS Lite (64-bit)",
                        "A port of Debian Trixie with no desktop environment (Compatible with Raspberry Pi 3/4/400/5)",
                        "raspios_lite_arm64",
                        f"{DATE}-raspios-trixie-arm64-lite.img.xz",
                        devices=PI64,
                        init_format="cloudinit-rpi",
                    ),
                    raspios_entry(
                        "Raspberry Pi OS Full (64-bit)",
                        "A port of Debian Trixie with desktop environment and recommended applications",
                        "raspios_full_arm64",
                        f"{DATE}-raspios-trixie-arm64-full.img.xz",
                        devices=PI64,
                        init_format="cloudinit-rpi",
                        size=2_055_350_556,
                        extract_size=9_705_619_456,
                    ),
                    *served,
                    raspios_entry(
                        "Raspberry Pi OS (Legacy, 64-bit) Lite",
                        "A port of Debian Bookworm with security updates and no desktop environment",
                        "raspios_oldstable_lite_arm64",
                        f"{DATE}-raspios-bookworm-arm64-lite.img.xz",
                        devices=PI64,
                        init_format="systemd",
                        size=443_179_684,
                        extract_size=2_709_520_384,
                    ),
                ],
            },
            {
                "name": "Other general-purpose OS",
                "description": "Other general-purpose operating systems",
                "icon": "icons/cat_other_general_purpose_operating_systems.png",
                "random": False,
                "subitems": [
                    {
                        "name": "Ubuntu",
                        "description": "Choose from Ubuntu Desktop, Server, and Core images",
                        "icon": "",
                        "random": False,
                        "devices": ["pi3-64bit", "pi4-64bit", "pi5-64bit"],
                        "subitems": [
                            {
                                "name": "Ubuntu Server 24.04.5 LTS (64-bit)",
                                "description": "Server OS for RPi Zero 2W/3/4/400/5",
                                "icon": "",
                                "url": "http://cdimage.ubuntu.com/ubuntu/releases/noble/release/"
                                "ubuntu-24.04.5-preinstalled-server-arm64+raspi.img.xz",
                                "extract_size": 4_279_900_672,
                                "extract_sha256": _digest("ubuntu-image"),
                                "image_download_size": 1_368_926_404,
                                "image_download_sha256": _digest("ubuntu-archive"),
                                "release_date": "2026-09-08",
                                "init_format": "cloudinit",
                                "devices": ["pi5-64bit", "pi4-64bit", "pi3-64bit"],
                                "capabilities": [],
                            }
                        ],
                    }
                ],
            },
            {
                "name": "Misc utility images",
                "description": "Bootloader EEPROM configuration, etc.",
                "icon": "icons/cat_misc_utility_images.png",
                "subitems": [
                    {
                        "name": "Bootloader (Pi 4 family)",
                        "description": "Raspberry Pi 4 / 400 / CM4 bootloader",
                        "icon": "",
                        "subitems_url": f"{RPI}/eeprom/pi4_bootloader.json",
                        "devices": ["pi4-64bit", "pi4-32bit"],
                    }
                ],
            },
            {
                "name": "Erase",
                "description": "Format card as FAT32",
                "icon": "icons/erase.png",
                "url": "internal://format",
                "release_date": "",
                "extract_size": 0,
                "image_download_size": 0,
            },
        ],
    }


def render(served: list[dict[str, Any]]) -> bytes:
    return (json.dumps(document(served), indent=1) + "\n").encode()
