"""What finalize writes for other tools: Raspberry Pi Imager's OS list entry and a CycloneDX SBOM (issue 14).

On the Raspberry-Pi-OS-shaped fixture, provisioned the way the roles leave an image: a virtual
environment with a wheel-installed distribution, the verified wheel kept in /var/cache/pibake/wheels,
and a model in a versioned directory. No root, no QEMU.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from pibake.disk.ext4 import ExtFs, MakeDir, Symlink, WriteFile
from pibake.errors import UsageError
from pibake.image import prepare
from pibake.util.cache import sha256_file
from tests.conftest import run_cli
from tests.integration import raspios

VENV = "/opt/pibake/venv"
SITE = f"{VENV}/lib/python3.9/site-packages"
WHEEL = "tflite_runtime-2.11.0-cp39-cp39-manylinux2014_armv7l.whl"
WHEEL_BYTES = b"PK\x03\x04 a stand-in wheel" + bytes(1000)
CAR = "/opt/pibake/model/versions/1.0/car.tflite"
MODEL = {CAR: b"TFL3" + bytes(2000), "/opt/pibake/model/versions/1.0/labels.txt": b"car\n"}


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("provisioned")
    image = raspios.build_image(d / "raspios.img", d / "work")
    dirs = ["/opt", "/opt/pibake", VENV, f"{VENV}/lib", f"{VENV}/lib/python3.9", SITE]
    dirs += [f"{SITE}/tflite_runtime-2.11.0.dist-info", "/var/cache", "/var/cache/pibake", "/var/cache/pibake/wheels"]
    dirs += ["/opt/pibake/model", "/opt/pibake/model/versions", "/opt/pibake/model/versions/1.0"]
    ExtFs.partition(image, 2).apply(
        [
            *[MakeDir(p) for p in dirs],
            WriteFile(f"{VENV}/pyvenv.cfg", b"home = /usr/bin\ninclude-system-site-packages = true\nversion = 3.9.2\n"),
            WriteFile(
                f"{SITE}/tflite_runtime-2.11.0.dist-info/METADATA",
                b"Metadata-Version: 2.1\nName: tflite_runtime\nVersion: 2.11.0\n",
            ),
            WriteFile(f"{SITE}/tflite_runtime-2.11.0.dist-info/RECORD", b"tflite_runtime/__init__.py,sha256=x,10\n"),
            WriteFile(f"{SITE}/tflite_runtime-2.11.0.dist-info/INSTALLER", b"pip\n"),
            WriteFile(f"/var/cache/pibake/wheels/{WHEEL}", WHEEL_BYTES),
            *[WriteFile(p, data) for p, data in MODEL.items()],
            Symlink("/opt/pibake/model/current", "versions/1.0"),
        ]
    )
    return image


def test_finalize_writes_an_imager_entry_and_a_valid_cyclonedx_sbom(provisioned: Path, tmp_path: Path) -> None:
    work = prepare.copy_image(provisioned, tmp_path / "car.img")
    res = run_cli(["image", "finalize", str(work)])
    assert res.code == 0, res.err
    digest = sha256_file(work)
    assert f"{work}.os_list.json" in res.out and f"{work}.cdx.json" in res.out

    oslist = json.loads(Path(f"{work}.os_list.json").read_text())
    (entry,) = oslist["os_list"]
    # What Imager's schema requires of an entry, and what pibake adds for the customisation screen.
    assert set(entry) >= {"name", "description", "icon", "url", "extract_size", "extract_sha256"}
    assert set(entry) >= {"image_download_size", "image_download_sha256", "release_date", "devices", "init_format"}
    assert entry["url"] == work.resolve().as_uri()
    assert entry["extract_sha256"] == entry["image_download_sha256"] == digest
    assert entry["extract_size"] == entry["image_download_size"] == work.stat().st_size
    # raspberrypi-sys-mods and no cloud-init: Imager writes firstrun.sh (bookworm and earlier).
    assert entry["init_format"] == "systemd"
    # No board recorded, an armhf image: every 32-bit board of the table, newest first.
    assert entry["devices"] == ["pi4-32bit", "pi3-32bit", "pi2-32bit", "pi1-32bit"]
    assert "model 1.0" in entry["description"] and entry["name"] == "car (pibake)"

    text = Path(f"{work}.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    assert bom["specVersion"] == "1.6"
    assert bom["metadata"]["component"]["hashes"] == [{"alg": "SHA-256", "content": digest}]
    by_purl = {c.get("purl", ""): c for c in bom["components"]}
    # Raspberry Pi OS armhf is Raspbian's build of Debian: the vendor scanners look it up under.
    assert "pkg:deb/raspbian/openssh-server@1:8.4p1-5%2Bdeb11u3?arch=armhf&distro=raspbian-11" in by_purl
    assert "pkg:deb/raspbian/raspi-config@20231012~bullseye?arch=all&distro=raspbian-11" in by_purl
    assert not any("removed-thing" in p for p in by_purl)  # deinstalled, config files only
    tflite = by_purl["pkg:pypi/tflite-runtime@2.11.0"]
    assert tflite["hashes"] == [{"alg": "SHA-256", "content": hashlib.sha256(WHEEL_BYTES).hexdigest()}]
    assert {"name": "pibake:python:location", "value": SITE} in tflite["properties"]
    assert "pkg:pypi/numpy@1.19.5" in by_purl and "pkg:pypi/rpi-gpio@0.7.0" in by_purl
    (model,) = [c for c in bom["components"] if c["type"] == "machine-learning-model"]
    manifest = json.loads(Path(f"{work}.manifest.json").read_text())
    assert model["hashes"][0]["content"] == manifest["model"]["sha256"] and model["version"] == "1.0"
    files = {c["name"]: c["hashes"][0]["content"] for c in model["components"]}
    assert (
        files["versions/1.0/car.tflite"]
        == hashlib.sha256(MODEL["/opt/pibake/model/versions/1.0/car.tflite"]).hexdigest()
    )
    # The manifest lists the venv's distribution too.
    assert any(d["name"] == "tflite_runtime" and d["location"] == SITE for d in manifest["python"])
    (os_component,) = [c for c in bom["components"] if c["type"] == "operating-system"]
    assert os_component["name"] == "raspbian" and os_component["version"] == "11"


def test_the_imager_entry_takes_a_url_a_name_and_a_format(provisioned: Path, tmp_path: Path) -> None:
    work = prepare.copy_image(provisioned, tmp_path / "car.img")
    url = "https://images.example.invalid/fleet/car.img"
    res = run_cli(
        ["image", "finalize", str(work), "--imager-url", url, "--imager-name", "Car fleet", "--init-format", "none"]
    )
    assert res.code == 0, res.err
    (entry,) = json.loads(Path(f"{work}.os_list.json").read_text())["os_list"]
    assert (entry["url"], entry["name"], entry["init_format"]) == (url, "Car fleet", "none")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--imager-url", "https://images.example.invalid/car.img.xz"], "must name the image file itself"),
        (["--imager-url", "ftp://images.example.invalid/car.img"], "http://, https:// or file://"),
        (["--xz", "--imager-url", "https://images.example.invalid/car.img"], "must name the compressed image"),
    ],
)
def test_a_bad_imager_option_changes_nothing(provisioned: Path, tmp_path: Path, args: list[str], message: str) -> None:
    work = prepare.copy_image(provisioned, tmp_path / "car.img")
    before = sha256_file(work)
    res = run_cli(["image", "finalize", str(work), *args])
    assert res.code == UsageError.exit_code and message in res.err
    assert sha256_file(work) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["car.img"]


def test_xz_publishes_the_image_compressed_and_imager_downloads_that(provisioned: Path, tmp_path: Path) -> None:
    work = prepare.copy_image(provisioned, tmp_path / "car.img")
    res = run_cli(["image", "finalize", str(work), "--xz"])
    assert res.code == 0, res.err
    xz = tmp_path / "car.img.xz"
    digest, xz_digest = sha256_file(work), sha256_file(xz)
    assert f"{xz}  sha256 {xz_digest}" in res.out
    assert (tmp_path / "car.img.xz.sha256").read_text() == f"{xz_digest}  car.img.xz\n"
    assert not (tmp_path / "car.img.xz.part").exists()
    # The .xz holds the finished image byte for byte (xz-utils' own check, then the digest of what it unpacks).
    unpacked = subprocess.run(["xz", "-dc", str(xz)], capture_output=True, check=True).stdout
    assert hashlib.sha256(unpacked).hexdigest() == digest
    assert xz.stat().st_size < work.stat().st_size // 10  # a 264 MiB image of mostly free space
    (entry,) = json.loads(Path(f"{work}.os_list.json").read_text())["os_list"]
    assert entry["url"] == xz.resolve().as_uri()
    assert (entry["image_download_sha256"], entry["image_download_size"]) == (xz_digest, xz.stat().st_size)
    assert (entry["extract_sha256"], entry["extract_size"]) == (digest, work.stat().st_size)
    manifest = json.loads(Path(f"{work}.manifest.json").read_text())
    assert manifest["xz"] == {"name": "car.img.xz", "sha256": xz_digest, "size": xz.stat().st_size}
    # bmaptool writes the card from the .xz with the raw image's block map.
    card = tmp_path / "card.img"
    card.write_bytes(b"")
    subprocess.run(["bmaptool", "copy", "--bmap", f"{work}.bmap", str(xz), str(card)], check=True, capture_output=True)
    assert sha256_file(card) == digest
    # Finalized again without --xz: the .xz of the image as it was is removed with its digest, not left to mislead.
    res = run_cli(["image", "finalize", str(work)])
    assert res.code == 0, res.err
    assert not xz.exists() and not (tmp_path / "car.img.xz.sha256").exists()
    assert json.loads(Path(f"{work}.manifest.json").read_text())["xz"] is None
