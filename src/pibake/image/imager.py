"""Raspberry Pi Imager's description of a finished image (IMAGE.os_list.json), to flash it with Imager.

The file is an OS list with one entry, in the schema Imager reads from Raspberry Pi's own list
(pibake.image.catalogue): name, description, icon, url, extract_size and extract_sha256 (Imager
checks the image against these while it writes the card), image_download_size and
image_download_sha256, release_date, devices (Imager's board tags) and init_format (which
first-boot settings Imager may write: with it, Imager keeps its customisation screen for the
image, which it refuses for a bare local .img). Imager takes it as a custom repository
(``rpi-imager --repo IMAGE.os_list.json``, or App Options > Content Repository > Use custom file).

The download is the image itself: url names IMAGE (its file:// URL by default, as Imager's own
create_local_json.py writes them, or where the user will publish it), so both digests are IMAGE's;
or, with finalize --xz, IMAGE.xz, whose size and digest are then the download's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pibake import __version__, boards
from pibake._module_utils.isa import Arch
from pibake.errors import UsageError

INIT_FORMATS = ("none", "systemd", "cloudinit", "cloudinit-rpi")


def check_url(url: str, *, suffix: str = ".img") -> str:
    """A URL Imager can download IMAGE from: http(s) or file, naming the file the entry describes.

    SUFFIX is that file's: ".img" (the raw image: the download digests are the image's) or
    ".img.xz" (finalize --xz: the download is IMAGE.xz, which Imager decompresses). Raises
    UsageError otherwise.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "file"):
        raise UsageError(f"--imager-url {url!r}: Imager downloads http://, https:// or file:// URLs")
    if not unquote(parts.path).lower().endswith(suffix):
        what = "the image file itself (.img)" if suffix == ".img" else "the compressed image (IMAGE.xz, .img.xz)"
        raise UsageError(
            f"--imager-url {url!r} must name {what}: the entry's download digest and size are that file's, "
            "so publish it as it is there"
        )
    return url


def init_format(packages: Sequence[Mapping[str, str]]) -> str:
    """How the image takes first-boot settings from Imager, read from what is installed.

    cloud-init on Raspberry Pi OS (trixie on): ``cloudinit-rpi``; cloud-init elsewhere: ``cloudinit``;
    raspberrypi-sys-mods without cloud-init (bookworm, bullseye: firstrun.sh through its
    imager_custom): ``systemd``; anything else, such as the Debian-built base: ``none``, and Imager
    offers no customisation rather than writing files nothing reads.
    """
    names = {p["name"] for p in packages}
    raspberry_pi = "raspberrypi-sys-mods" in names
    if "cloud-init" in names:
        return "cloudinit-rpi" if raspberry_pi else "cloudinit"
    return "systemd" if raspberry_pi else "none"


def image_architecture(packages: Sequence[Mapping[str, str]]) -> str:
    """The image's dpkg architecture (that of dpkg itself, or of base-files), "" if unknown."""
    by_name = {p["name"]: p.get("architecture", "") for p in packages}
    return by_name.get("dpkg") or by_name.get("base-files") or ""


def devices(board: str | None, architecture: str) -> list[str]:
    """Imager's tags for the boards that run the image: BOARD's, else every board of the table for the architecture.

    A 64-bit image (arm64) runs on the ARMv8 boards only and takes their -64bit tags.
    """
    sixty_four = architecture == "arm64"
    chosen = [boards.get(board)] if board else list(boards.BOARDS.values())
    tags = []
    for b in chosen:
        if sixty_four and b.isa.arch < Arch.ARMV8:
            continue
        tag = b.imager_device.replace("-32bit", "-64bit") if sixty_four else b.imager_device
        if tag not in tags:
            tags.append(tag)
    return sorted(tags, reverse=True)  # newest board first, as Imager lists them


def document(
    image: Path,
    *,
    sha256: str,
    size: int,
    url: str | None,
    name: str | None,
    download: tuple[Path, str] | None = None,
    os_name: str,
    device_tags: Sequence[str],
    init: str,
    model_version: str | None,
    release_date: str | None = None,
) -> dict[str, object]:
    """The OS list holding IMAGE's one entry.

    DOWNLOAD is (IMAGE.xz, its sha256) when the image is published compressed: the entry's url
    (by default) and image_download_size/sha256 are then the .xz's, extract_size/extract_sha256
    stay the image's, as in Raspberry Pi's own list.
    """
    download_path, download_sha256, download_size = image, sha256, size
    if download is not None:
        download_path, download_sha256 = download
        download_size = download_path.stat().st_size
    description = f"{os_name or 'Linux'} with {'model ' + model_version if model_version else 'no model'}"
    entry = {
        "name": name or f"{image.stem} (pibake)",
        "description": f"{description}, tested in emulation and finalized by pibake {__version__}",
        "icon": "",
        "url": url or download_path.resolve().as_uri(),
        "extract_size": size,
        "extract_sha256": sha256,
        "image_download_size": download_size,
        "image_download_sha256": download_sha256,
        "release_date": release_date or datetime.now(UTC).date().isoformat(),
        "devices": list(device_tags),
        "init_format": init,
    }
    return {"os_list": [entry]}


def render(doc: Mapping[str, object]) -> str:
    return json.dumps(doc, indent=2) + "\n"
