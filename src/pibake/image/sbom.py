"""A CycloneDX SBOM of a finished image (IMAGE.cdx.json): its OS, Debian packages, Python distributions and model.

The same facts as IMAGE.manifest.json, in the standard form the usual scanners read (Grype,
Trivy, Dependency-Track): Debian packages as ``pkg:deb/<os id>/NAME@VERSION?arch=ARCH&distro=ID-VERSION``
(the vendor is os-release's ID: ``debian`` for the Debian-built base and Raspberry Pi OS arm64,
``raspbian`` for Raspberry Pi OS armhf, whose packages are Raspbian's builds), Python distributions
as ``pkg:pypi/NAME@VERSION`` with the sha256 of the wheel they were installed from where the image
keeps it (the python_runtime role leaves its verified wheels in /var/cache/pibake/wheels), and the
model as a ``machine-learning-model`` component with its files. Written with the maintained
``cyclonedx-python-lib`` (the OWASP CycloneDX project's own), as CycloneDX 1.6 JSON.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from pibake import __version__

SPEC = "1.6"
# Where the python_runtime role keeps the wheels it verified and installed (python_runtime_target_wheel_dir).
WHEEL_DIR = "/var/cache/pibake/wheels"
DEB_VENDORS = ("debian", "raspbian", "ubuntu")


def normalise_name(name: str) -> str:
    """A Python distribution's name as PyPI and purl compare it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_key(filename: str) -> tuple[str, str] | None:
    """(normalised name, version) from a wheel file name: tflite_runtime-2.11.0-cp39-... is (tflite-runtime, 2.11.0)."""
    if not filename.endswith(".whl"):
        return None
    parts = filename[: -len(".whl")].split("-")
    return (normalise_name(parts[0]), parts[1]) if len(parts) >= 5 else None


def deb_purl_parts(package: Mapping[str, str], os_release: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The purl's namespace and qualifiers for a Debian package of an image with OS_RELEASE."""
    os_id = os_release.get("ID", "").lower()
    vendor = os_id if os_id in DEB_VENDORS else "debian"
    qualifiers = {"arch": package["architecture"]} if package.get("architecture") else {}
    if os_id and os_release.get("VERSION_ID"):
        qualifiers["distro"] = f"{os_id}-{os_release['VERSION_ID']}"
    return vendor, qualifiers


def build_json(
    *,
    image_name: str,
    image_sha256: str,
    image_size: int,
    os_release: Mapping[str, str],
    packages: Sequence[Mapping[str, str]],
    python: Sequence[Mapping[str, str]],
    wheels: Mapping[tuple[str, str], str],
    model: Mapping[str, Any] | None,
) -> str:
    """The SBOM as CycloneDX 1.6 JSON text.

    WHEELS maps (normalised name, version) to the sha256 of the wheel file kept in the image.
    """
    # Imported here: the library (and its schema machinery) is only needed at finalize.
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    def sha256(digest: str) -> list[HashType]:
        return [HashType(alg=HashAlgorithm.SHA_256, content=digest)] if digest else []

    bom = Bom()
    image = Component(
        type=ComponentType.FILE,
        name=image_name,
        version=image_sha256[:12],
        bom_ref=f"image:{image_name}",
        hashes=sha256(image_sha256),
        description=f"SD card image, {image_size} bytes",
    )
    bom.metadata.component = image
    bom.metadata.tools.components.add(Component(type=ComponentType.APPLICATION, name="pibake", version=__version__))
    parts: list[Component] = []
    if os_release.get("ID"):
        parts.append(
            Component(
                type=ComponentType.OPERATING_SYSTEM,
                name=os_release["ID"],
                version=os_release.get("VERSION_ID") or None,
                description=os_release.get("PRETTY_NAME") or None,
                bom_ref=f"os:{os_release['ID']}",
            )
        )
    for p in packages:
        vendor, qualifiers = deb_purl_parts(p, os_release)
        purl = PackageURL("deb", vendor, p["name"], p["version"] or None, qualifiers or None)
        props = (
            [Property(name="pibake:dpkg:md5sums-sha256", value=p["md5sums_sha256"])] if p.get("md5sums_sha256") else []
        )
        parts.append(
            Component(
                type=ComponentType.LIBRARY,
                name=p["name"],
                version=p["version"] or None,
                purl=purl,
                bom_ref=purl.to_string(),
                properties=props,
            )
        )
    for d in python:
        if not d.get("name"):
            continue
        key = (normalise_name(d["name"]), d["version"])
        purl = PackageURL("pypi", None, key[0], d["version"] or None)
        props = [Property(name="pibake:python:location", value=d["location"])]
        if d.get("installer"):
            props.append(Property(name="pibake:python:installer", value=d["installer"]))
        if d.get("sha256"):
            props.append(Property(name=f"pibake:python:{d['sha256_of'].lower()}-sha256", value=d["sha256"]))
        parts.append(
            Component(
                type=ComponentType.LIBRARY,
                name=d["name"],
                version=d["version"] or None,
                purl=purl,
                bom_ref=f"python:{d['location']}/{key[0]}@{d['version']}",
                hashes=sha256(wheels.get(key, "")),
                properties=props,
            )
        )
    if model:
        current = str(model.get("current") or "")
        files = [
            Component(
                type=ComponentType.FILE,
                name=f["path"],
                bom_ref=f"model-file:{f['path']}",
                hashes=sha256(f["sha256"]),
            )
            for f in model.get("files", [])
        ]
        parts.append(
            Component(
                type=ComponentType.MACHINE_LEARNING_MODEL,
                name=str(model["path"]),
                version=PurePosixPath(current).name if current else None,
                bom_ref="model",
                hashes=sha256(str(model["sha256"])),
                description="the model's files; its sha256 is that of their sha256sum listing, sorted by path",
                components=files,
            )
        )
    for c in parts:
        bom.components.add(c)
    bom.register_dependency(image, parts)
    return str(JsonV1Dot6(bom).output_as_string(indent=2)) + "\n"
