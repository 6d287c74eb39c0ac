"""Finalize an image for the card: undo the emulation tweaks, reset what is per device, check it, describe it.

What a boot made that must be unique per device (machine-id, SSH host keys, random seed, DHCP
leases, cloud-init's instance) is reset, so that each card makes its own on its first boot
(image/identity.py). Writes, next to IMAGE:
  IMAGE.sha256         the image's digest, sha256sum format
  IMAGE.bmap           bmaptool's block map of the data (pibake.bmap)
  IMAGE.manifest.json  what is on it: base image digest, Debian packages, Python
                       distributions, the model's files, each with a version and a digest;
                       and what was reset for each card to make its own
  IMAGE.os_list.json   the image as Raspberry Pi Imager's OS list describes one (image/imager.py)
  IMAGE.cdx.json       the same facts as the manifest, as a CycloneDX SBOM (image/sbom.py)
Every file is computed before the first is written, and each appears whole (a rename).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pibake import __version__, boards
from pibake.disk.ext4 import ExtFs
from pibake.disk.fsck import check_filesystems
from pibake.disk.layout import MIB
from pibake.disk.resize import root_partition, shrink_root
from pibake.disk.sparse import match_free_space
from pibake.errors import UsageError
from pibake.flash import bmap
from pibake.image import check as bootcheck
from pibake.image import identity, imager, sbom
from pibake.image.prepare import parse_os_release, undo_tweaks, work_dir
from pibake.util import progress
from pibake.util.cache import sha256_file
from pibake.util.proc import run
from pibake.util.publish import write_sha256

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
MODEL_DIR = "/opt/pibake/model"
DPKG_STATUS = "/var/lib/dpkg/status"
DPKG_INFO = "/var/lib/dpkg/info"
# Where Debian's python3 packages and pip (as root, outside a venv) install distributions.
DIST_PACKAGES = "/usr/lib/python3/dist-packages"
LOCAL_LIB = "/usr/local/lib"
# Where a provisioning run's virtual environments may be (each has a pyvenv.cfg at its top).
VENV_ROOTS = ("/opt", "/srv", "/home")


@dataclass(frozen=True)
class FinalizedImage:
    path: Path
    sha256: str
    size: int
    sha256_file: Path
    bmap_file: Path | None
    manifest_file: Path
    imager_file: Path
    sbom_file: Path
    # IMAGE.xz and its sha256 (--xz), else None.
    xz_file: Path | None
    xz_sha256: str | None
    undone: tuple[str, ...]
    # Per-device state reset (image/identity.py), one entry per kind; what makes the card's SSH host keys.
    identity_reset: tuple[str, ...]
    ssh_host_keys_made_by: str | None
    shrunk_to: int | None
    packages: int
    python_distributions: int
    model_sha256: str | None
    seconds: float


# ---------------------------------------------------------------- pure parsers


def parse_dpkg_status(text: str) -> list[dict[str, str]]:
    """Installed packages ("install ok installed") from a dpkg status file: name, version, architecture."""
    packages = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue  # continuation lines (descriptions, conffiles)
            key, value = line.split(":", 1)
            fields[key] = value.strip()
        if "Package" in fields and fields.get("Status", "").endswith(" installed"):
            packages.append(
                {
                    "name": fields["Package"],
                    "version": fields.get("Version", ""),
                    "architecture": fields.get("Architecture", ""),
                }
            )
    return sorted(packages, key=lambda p: (p["name"], p["architecture"]))


def parse_metadata(text: str) -> dict[str, str]:
    """Name and Version from a METADATA / PKG-INFO file (RFC 822 headers up to the first blank line)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        if ":" in line and line[:1] not in (" ", "\t"):
            key, value = line.split(":", 1)
            fields.setdefault(key.strip(), value.strip())
    return {"name": fields.get("Name", ""), "version": fields.get("Version", "")}


def tree_digest(files: dict[str, str]) -> str:
    """One digest for a set of files: the sha256 of their `sha256sum` listing, sorted by path."""
    listing = "".join(f"{digest}  {path}\n" for path, digest in sorted(files.items()))
    return hashlib.sha256(listing.encode()).hexdigest()


# ---------------------------------------------------------------- compressing


def compress_xz(image: Path) -> Path:
    """IMAGE compressed to IMAGE.xz with xz-utils' xz on every core (-T0, preset 6), IMAGE kept; returns IMAGE.xz.

    xz (the format Raspberry Pi publishes its images in, and that Imager and bmaptool read) writes
    IMAGE.xz.part, renamed once it is whole, so an interrupted run leaves no IMAGE.xz. Raises
    ToolMissing without xz, CommandFailed when it fails.
    """
    part = image.with_name(image.name + ".xz.part")
    part.unlink(missing_ok=True)
    try:
        run(["xz", "--threads=0", "-6", "--keep", "--force", "--suffix=.xz.part", str(image)])
        return part.replace(image.with_name(image.name + ".xz"))
    finally:
        part.unlink(missing_ok=True)


# ---------------------------------------------------------------- reading the image


def installed_packages(root: ExtFs, work: Path) -> list[dict[str, str]]:
    status = root.read(DPKG_STATUS)
    if status is None:
        log.warning("%s: no %s: the manifest lists no Debian packages", root.image.name, DPKG_STATUS)
        return []
    packages = parse_dpkg_status(status.decode(errors="replace"))
    # dpkg keeps an md5 of every file a package installed; the digest of that list
    # pins the package's installed content, not just its version string.
    info = root.rdump(DPKG_INFO, work) if root.stat(DPKG_INFO) is not None else None
    for p in packages:
        if info is None:
            break
        for name in (f"{p['name']}:{p['architecture']}.md5sums", f"{p['name']}.md5sums"):
            if (info / name).is_file():
                p["md5sums_sha256"] = sha256_file(info / name)
                break
    return packages


def venv_site_dirs(root: ExtFs) -> list[str]:
    """The site-packages of every virtual environment under VENV_ROOTS (a directory with a pyvenv.cfg)."""
    venvs = [
        str(PurePosixPath(path).parent)
        for top in VENV_ROOTS
        for path, entry in root.walk(top)
        if entry.name == "pyvenv.cfg" and entry.is_file
    ]
    libs = root.list_dirs([f"{v}/lib" for v in venvs])
    return sorted(
        f"{lib}/{e.name}/site-packages"
        for lib, entries in libs.items()
        for e in entries or []
        if e.is_dir and e.name.startswith("python3")
    )


def python_distributions(root: ExtFs) -> list[dict[str, str]]:
    """Every *.dist-info and *.egg-info in the system's dist-packages and in virtual environments, with its
    version and a digest.

    The digest is of RECORD where there is one (it lists a sha256 of every installed
    file, so it pins the installed content); else of METADATA or PKG-INFO.
    """
    site_dirs = [DIST_PACKAGES]
    for entry in root.list_dir(LOCAL_LIB) or []:
        if entry.is_dir and entry.name.startswith("python3"):
            site_dirs.append(f"{LOCAL_LIB}/{entry.name}/dist-packages")
    site_dirs += venv_site_dirs(root)
    found: list[tuple[str, str, bool]] = []  # (site dir, entry name, is a directory)
    for site, entries in root.list_dirs(site_dirs).items():
        for entry in entries or []:
            if entry.name.endswith((".dist-info", ".egg-info")):
                found.append((site, entry.name, entry.is_dir))
    wanted: list[str] = []
    for site, name, is_dir in found:
        base = f"{site}/{name}"
        wanted += [f"{base}/METADATA", f"{base}/RECORD", f"{base}/INSTALLER", f"{base}/PKG-INFO"] if is_dir else [base]
    contents = root.read_many(wanted)
    dists = []
    for site, name, is_dir in found:
        base = f"{site}/{name}"
        if is_dir:
            meta_name = "METADATA" if contents.get(f"{base}/METADATA") is not None else "PKG-INFO"
            metadata = contents.get(f"{base}/{meta_name}")
            record = contents.get(f"{base}/RECORD")
            installer = (contents.get(f"{base}/INSTALLER") or b"").decode(errors="replace").strip()
        else:
            meta_name, metadata, record, installer = name, contents.get(base), None, ""
        fields = parse_metadata(metadata.decode(errors="replace")) if metadata else {"name": "", "version": ""}
        if not fields["name"]:
            # name-version.dist-info, as the directory is named, when its metadata is unreadable
            stem = name.rsplit(".", 1)[0]
            fields = dict(zip(("name", "version"), [*stem.split("-", 1), ""][:2], strict=True))
        hashed, hash_of = (record, "RECORD") if record else (metadata, meta_name)
        dists.append(
            {
                "name": fields["name"],
                "version": fields["version"],
                "location": site,
                "installer": installer or ("debian" if site == DIST_PACKAGES else ""),
                "sha256": hashlib.sha256(hashed).hexdigest() if hashed else "",
                "sha256_of": hash_of if hashed else "",
            }
        )
    return sorted(dists, key=lambda d: (d["name"].lower(), d["location"]))


def kept_wheels(root: ExtFs) -> dict[tuple[str, str], str]:
    """The sha256 of each wheel the image keeps in sbom.WHEEL_DIR, by (normalised name, version)."""
    entries = root.list_dir(sbom.WHEEL_DIR) or []
    names = [e.name for e in entries if e.is_file and sbom.wheel_key(e.name)]
    contents = root.read_many([f"{sbom.WHEEL_DIR}/{n}" for n in names])
    wheels = {}
    for n in names:
        key, data = sbom.wheel_key(n), contents.get(f"{sbom.WHEEL_DIR}/{n}")
        if key is not None and data is not None:
            wheels[key] = hashlib.sha256(data).hexdigest()
    return wheels


def model_files(root: ExtFs, work: Path) -> dict[str, Any] | None:
    entry = root.stat(MODEL_DIR)
    if entry is None or not entry.is_dir:
        return None
    local = root.rdump(MODEL_DIR, work / "model-dump")
    files = {str(p.relative_to(local)): sha256_file(p) for p in local.rglob("*") if p.is_file() and not p.is_symlink()}
    current = local / "current"
    return {
        "path": MODEL_DIR,
        # The model role's current version: the target of MODEL_DIR/current (versions/<version>).
        "current": str(current.readlink()) if current.is_symlink() else None,
        "sha256": tree_digest(files),
        "files": [{"path": path, "sha256": digest} for path, digest in sorted(files.items())],
    }


# ---------------------------------------------------------------- the step


def _earlier_base(manifest: Path) -> dict[str, Any] | None:
    """The base image a previous finalize recorded: the record it read is gone from the image since."""
    try:
        base = json.loads(manifest.read_text()).get("base")
    except (OSError, ValueError, AttributeError):
        return None
    return dict(base) if isinstance(base, dict) else None


def _write_whole(path: Path, text: str) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    part.rename(path)


def finalize(
    image: Path,
    *,
    write_bmap: bool = True,
    manifest: Path | None = None,
    board: str | None = None,
    imager_url: str | None = None,
    imager_name: str | None = None,
    init_format: str | None = None,
    xz: bool = False,
) -> FinalizedImage:
    """Undo the emulation tweaks, fsck both filesystems, check the boot partition for BOARD,
    write IMAGE.sha256, IMAGE.bmap, the manifest, Imager's OS list entry and the SBOM; with XZ,
    IMAGE.xz and IMAGE.xz.sha256 too (see compress_xz), which Imager's entry then downloads.

    BOARD defaults to the board pibake recorded in config.txt; an image with none (Raspberry
    Pi OS) gets its boot partition checked only when BOARD is given. IMAGER_URL is where Imager
    will download the image (default: its file:// URL), IMAGER_NAME the name Imager shows, and
    INIT_FORMAT overrides the first-boot format read from the installed packages.
    """
    t0 = time.monotonic()
    if not image.is_file():
        raise UsageError(f"no image at {image}")
    # Bad options are refused before the image is touched.
    if imager_url is not None:
        imager.check_url(imager_url, suffix=".img.xz" if xz else ".img")
    xz_path = image.with_name(image.name + ".xz")
    if xz and xz_path.is_dir():
        raise UsageError(f"{xz_path} is a directory: --xz writes the compressed image there")
    if init_format is not None and init_format not in imager.INIT_FORMATS:
        raise UsageError(f"--init-format {init_format!r}: Imager knows {', '.join(imager.INIT_FORMATS)}")
    if board is not None:
        boards.get(board)
    with progress.step(f"finalize {image.name}", logger=log) as status:
        root_partition(image)
        # Planned before anything changes: an image that would lose its host keys with nothing to make
        # new ones is refused as it is.
        status.show("undoing the emulation tweaks, resetting what is per device")
        reset = identity.plan(ExtFs.partition(image, 2))
        record, undone = undo_tweaks(image)
        identity.apply(ExtFs.partition(image, 2), reset)
        if reset.resets:
            log.info("%s: reset for each card to make its own: %s", image.name, ", ".join(reset.summary) or "-")
        shrunk_to = None
        with work_dir(image) as work:
            card_size = int(record["card_size"]) if record else None
            if card_size is not None and card_size < image.stat().st_size:
                # The power-of-two size was for QEMU's SD card only: a card needs just what was asked for.
                status.show(f"shrinking the image back to {card_size // MIB} MiB")
                if shrink_root(image, card_size, work):
                    shrunk_to = card_size
                    log.info("%s: back to %d MiB for the card", image.name, card_size // MIB)
                else:
                    log.warning(
                        "%s: the root filesystem no longer fits in %d MiB; the image keeps its %d MiB",
                        image.name,
                        card_size // MIB,
                        image.stat().st_size // MIB,
                    )
            log.info("%s: checking both filesystems", image.name)
            status.show("checking both filesystems (fsck)")
            check_filesystems(image, work)
            board = board or bootcheck.board_recorded_in(image)
            if board:
                bootcheck.check_boot(image, board=board)
            else:
                log.info(
                    "%s: config.txt records no board: boot partition not checked (pass a board to check it)", image.name
                )
            status.show("listing packages, Python distributions and the model")
            root = ExtFs.partition(image, 2)
            os_release = root.read("/etc/os-release") or root.read("/usr/lib/os-release") or b""
            packages = installed_packages(root, work)
            dists = python_distributions(root)
            wheels = kept_wheels(root)
            model = model_files(root, work)
        # Holes only where a filesystem says the space is free: the bmap then leaves out nothing that
        # matters, even for bmaptool, which leaves a card's old bytes wherever the bmap does not map.
        status.show("punching holes where the filesystems are free")
        match_free_space(image)
        status.show("hashing the image (sha256)")
        digest = sha256_file(image)
        size = image.stat().st_size
        xz_file, xz_sha256 = None, None
        if not xz:
            # An IMAGE.xz of an earlier finalize --xz is of the image as it was then: gone, with its digest.
            for stale in (xz_path, xz_path.with_name(xz_path.name + ".sha256")):
                if stale.is_file():
                    log.info("%s: removing %s, written by an earlier finalize --xz", image.name, stale.name)
                    stale.unlink()
        if xz:
            status.show(f"compressing to {image.name}.xz (xz, every core)")
            xz_file = compress_xz(image)
            xz_sha256 = sha256_file(xz_file)
        os_info = parse_os_release(os_release.decode(errors="replace"))
        imager_doc = imager.document(
            image,
            sha256=digest,
            size=size,
            download=(xz_file, xz_sha256) if xz_file and xz_sha256 else None,
            url=imager_url,
            name=imager_name,
            os_name=os_info.get("PRETTY_NAME", ""),
            device_tags=imager.devices(board, imager.image_architecture(packages)),
            init=init_format or imager.init_format(packages),
            model_version=PurePosixPath(model["current"]).name if model and model.get("current") else None,
        )
        sbom_json = sbom.build_json(
            image_name=image.name,
            image_sha256=digest,
            image_size=size,
            os_release=os_info,
            packages=packages,
            python=dists,
            wheels=wheels,
            model=model,
        )
        write_sha256(image, digest)
        if xz_file is not None:
            write_sha256(xz_file, xz_sha256)
        bmap_file = None
        if write_bmap:
            status.show("writing the block map")
            bmap_file = bmap.default_path(image)
            bmap.create(image, bmap_file)
        manifest = manifest or image.with_name(image.name + ".manifest.json")
        base = dict(record["base"]) if record else _earlier_base(manifest)
        data = {
            "format": MANIFEST_FORMAT,
            "pibake": __version__,
            "image": {"name": image.name, "sha256": digest, "size": size},
            "bmap": bmap_file.name if bmap_file else None,
            "xz": {"name": xz_file.name, "sha256": xz_sha256, "size": xz_file.stat().st_size} if xz_file else None,
            "base": base,
            "os": os_info.get("PRETTY_NAME", ""),
            "emulation_tweaks_undone": list(undone),
            "identity": {
                "reset": [r.to_json() for r in reset.resets],
                "ssh_host_keys_made_by": reset.host_keys_made_by,
            },
            "packages": packages,
            "python": dists,
            "model": model,
        }
        _write_whole(manifest, json.dumps(data, indent=2, sort_keys=True) + "\n")
        imager_file = image.with_name(image.name + ".os_list.json")
        _write_whole(imager_file, imager.render(imager_doc))
        sbom_file = image.with_name(image.name + ".cdx.json")
        _write_whole(sbom_file, sbom_json)
    seconds = time.monotonic() - t0
    log.info("%s: finalized in %.1f s", image.name, seconds)
    return FinalizedImage(
        path=image,
        sha256=digest,
        size=size,
        sha256_file=image.with_name(image.name + ".sha256"),
        bmap_file=bmap_file,
        manifest_file=manifest,
        imager_file=imager_file,
        sbom_file=sbom_file,
        xz_file=xz_file,
        xz_sha256=xz_sha256,
        undone=undone,
        identity_reset=reset.summary,
        ssh_host_keys_made_by=reset.host_keys_made_by,
        shrunk_to=shrunk_to,
        packages=len(packages),
        python_distributions=len(dists),
        model_sha256=model["sha256"] if model else None,
        seconds=seconds,
    )
