"""The pure parts of finalize's Imager entry and SBOM: Imager's board tags, init_format, URLs, purls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from pibake import boards
from pibake.errors import UsageError
from pibake.image import imager, sbom


def test_every_board_has_an_imager_tag_of_the_list_imager_reads() -> None:
    assert {b.imager_device for b in boards.BOARDS.values()} == {"pi1-32bit", "pi2-32bit", "pi3-32bit", "pi4-32bit"}
    assert boards.get("pi-zero").imager_device == "pi1-32bit" and boards.get("pi-zero-2").imager_device == "pi3-32bit"


def test_devices_follow_the_board_and_the_architecture() -> None:
    assert imager.devices("pi2", "armhf") == ["pi2-32bit"]
    assert imager.devices(None, "armhf") == ["pi4-32bit", "pi3-32bit", "pi2-32bit", "pi1-32bit"]
    # A 64-bit image runs on the ARMv8 boards only.
    assert imager.devices(None, "arm64") == ["pi4-64bit", "pi3-64bit"]
    assert imager.devices("pi2", "arm64") == []


@pytest.mark.parametrize(
    ("installed", "expected"),
    [
        ({"cloud-init", "raspberrypi-sys-mods"}, "cloudinit-rpi"),
        ({"cloud-init"}, "cloudinit"),
        ({"raspberrypi-sys-mods", "userconf-pi"}, "systemd"),
        ({"openssh-server"}, "none"),
    ],
)
def test_init_format_is_read_from_what_is_installed(installed: set[str], expected: str) -> None:
    assert imager.init_format([{"name": n} for n in installed]) == expected


def test_the_url_must_be_the_image_itself() -> None:
    assert imager.check_url("file:///srv/car.img") == "file:///srv/car.img"
    assert imager.check_url("https://x.invalid/a%20b.IMG")
    for bad in ("https://x.invalid/car.img.xz", "s3://bucket/car.img", "car.img"):
        with pytest.raises(UsageError):
            imager.check_url(bad)
    # finalize --xz: the download is the compressed image.
    assert imager.check_url("https://x.invalid/car.img.xz", suffix=".img.xz")
    with pytest.raises(UsageError, match="compressed image"):
        imager.check_url("https://x.invalid/car.img", suffix=".img.xz")


def test_the_document_is_an_os_list_with_one_entry(tmp_path: Path) -> None:
    doc = imager.document(
        tmp_path / "car.img", sha256="ab" * 32, size=4096, url=None, name=None, os_name="Debian GNU/Linux 12",
        device_tags=["pi3-32bit"], init="none", model_version="2.0", release_date="2026-11-29",
    )  # fmt: skip
    (entry,) = json.loads(imager.render(doc))["os_list"]
    assert entry["url"] == (tmp_path / "car.img").as_uri() and entry["release_date"] == "2026-11-29"
    assert entry["description"].startswith("Debian GNU/Linux 12 with model 2.0")


def test_purls_and_wheel_names() -> None:
    assert sbom.normalise_name("RPi.GPIO") == "rpi-gpio" and sbom.normalise_name("tflite_runtime") == "tflite-runtime"
    assert sbom.wheel_key("tflite_runtime-2.14.0-cp311-cp311-manylinux_2_34_armv7l.whl") == ("tflite-runtime", "2.14.0")
    assert sbom.wheel_key("notes.txt") is None and sbom.wheel_key("x-1.whl") is None
    libc = {"name": "libc6", "version": "2.36-9", "architecture": "arm64"}
    assert sbom.deb_purl_parts(libc, {"ID": "debian", "VERSION_ID": "13"}) == (
        "debian",
        {"arch": "arm64", "distro": "debian-13"},
    )
    assert sbom.deb_purl_parts(libc, {"ID": "raspbian", "VERSION_ID": "11"})[0] == "raspbian"
    assert sbom.deb_purl_parts(libc, {})[0] == "debian"


def test_an_empty_image_still_gives_a_valid_sbom() -> None:
    text = sbom.build_json(
        image_name="x.img", image_sha256="cd" * 32, image_size=1, os_release={}, packages=[], python=[], wheels={},
        model=None,
    )  # fmt: skip
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
