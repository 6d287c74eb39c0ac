"""Download a Raspberry Pi OS image: a release of the OS list, resumable verified download, streaming decompression.

    partial  cache/downloads/<sha256>-<name>.part   grows across attempts and runs (HTTP Range)
    file     cache/files/<sha256>/<name>            download(): any file, once its sha256 matched
    image    cache/raspios/<archive sha256>/image.img + meta.json, written only once the
             archive's sha256 matched, it decompressed to the end and the image matched the
             OS list's extract_sha256 and extract_size (the archive is then dropped)

Releases come from Raspberry Pi's OS list (pibake.image.catalogue), which gives the image's
digest always and the archive's sometimes: whichever it gives is checked, both when it gives
both. What is stored is what the server sent (no content decoding), so a download resumes at the
right byte and is checked against the published digest. Nothing reaches the image cache
before its digests have been checked, and an archive that failed the check is deleted, so no
later run resumes or reuses it. An archive that matched its own digest but does not unpack
(corrupt as published, no room to unpack it) is kept: downloading it again cannot help.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import itertools
import json
import logging
import lzma
import os
import re
import shutil
import time
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal
from urllib.parse import urlsplit

import requests
import urllib3

from pibake import __version__
from pibake.disk.layout import MIB, parse_mbr
from pibake.disk.sparse import match_free_space
from pibake.errors import PibakeError, Refused, UsageError, VerificationFailed
from pibake.image import catalogue as oslist
from pibake.image.catalogue import Catalogue
from pibake.util.cache import cache_root, recipe_hash, sha256_file
from pibake.util.progress import Meter
from pibake.util.publish import publish

log = logging.getLogger(__name__)

CHUNK = MIB
# Smaller for the network: a cut connection loses the chunk being read.
NET_CHUNK = 256 << 10
PROGRESS_INTERVAL = 5.0  # seconds between two lines of download progress
Kind = Literal["xz", "gz", "zip", "raw"]


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAGIC: dict[Kind, tuple[bytes, ...]] = {
    "xz": (b"\xfd7zXZ\x00",),
    "gz": (b"\x1f\x8b",),
    "zip": (b"PK\x03\x04",),
    "raw": (),
}


@dataclass(frozen=True)
class Source:
    """What to download and how to check it, after the catalogue and the options are resolved."""

    url: str
    # The archive's sha256: None with --insecure-no-verify, or for a release whose OS list entry
    # gives only the image's (IMAGE_SHA256, checked once the archive is unpacked).
    sha256: str | None
    release: str | None
    size: int | None = None
    image_sha256: str | None = None
    image_size: int | None = None
    entry: oslist.Release | None = None

    @property
    def verified(self) -> bool:
        """Checked against a published digest: the archive's, the image's, or both."""
        return self.sha256 is not None or self.image_sha256 is not None

    @property
    def filename(self) -> str:
        return url_filename(self.url)

    @property
    def kind(self) -> Kind:
        return archive_kind(self.filename)


@dataclass(frozen=True)
class FetchedImage:
    path: Path
    image_sha256: str
    archive_sha256: str
    url: str
    release: str | None
    verified: bool
    cached: bool
    size: int
    seconds: float
    # From the OS list entry, for a catalogue release: how the image takes first-boot settings, and
    # Imager's board tags.
    init_format: str | None = None
    devices: tuple[str, ...] = ()
    release_date: str | None = None


# ---------------------------------------------------------------- pure helpers


def url_filename(url: str) -> str:
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    if not name:
        raise UsageError(f"cannot tell a file name from the URL {url!r}: it should end with the image's name")
    return name


def archive_kind(filename: str) -> Kind:
    lower = filename.lower()
    for suffix, kind in ((".xz", "xz"), (".gz", "gz"), (".zip", "zip"), (".img", "raw")):
        if lower.endswith(suffix):
            return kind  # type: ignore[return-value]
    raise UsageError(f"{filename}: pibake takes .img.xz, .img.gz, .zip or .img downloads")


def image_name(filename: str) -> str:
    """The disk image's name for an archive's: 2024-10-22-raspios-...-lite.img.xz -> ...-lite.img."""
    for suffix in (".xz", ".gz", ".zip"):
        if filename.lower().endswith(suffix):
            filename = filename[: -len(suffix)]
            break
    return filename if filename.lower().endswith(".img") else filename + ".img"


def normalise_sha256(value: str) -> str:
    digest = value.strip().lower().removeprefix("sha256:")
    if not _SHA256.match(digest):
        raise UsageError(f"{value!r} is not a sha256 digest (64 hexadecimal digits)")
    return digest


def parse_sha256_file(text: str, filename: str | None = None) -> str:
    """The digest in a published ``NAME.sha256`` file ("<hex>  <name>" lines)."""
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if filename is None or len(parts) < 2 or parts[-1].lstrip("*") == filename:
            return normalise_sha256(parts[0])
    raise PibakeError(f"no sha256 for {filename} in the checksum file")


def resolve(
    *,
    release: str | None = None,
    url: str | None = None,
    sha256: str | None = None,
    insecure_no_verify: bool = False,
    catalogue: Catalogue | None = None,
    catalogue_url: str | None = None,
    refresh_catalogue: bool = False,
    session: requests.Session | None = None,
) -> Source:
    """Turn the user's choice (a release name, or a URL with its sha256) into a Source.

    A release name is looked up in CATALOGUE, or in the OS list loaded from CATALOGUE_URL (a URL
    needs no list at all). No name and no URL: the catalogue's DEFAULT_RELEASE.
    """
    digest = normalise_sha256(sha256) if sha256 else None
    if url and release:
        raise UsageError("give either --release or --url, not both")
    if url:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"{url!r} is not an http(s) URL")
        archive_kind(url_filename(url))
        if digest is None and not insecure_no_verify:
            raise Refused(
                f"{url} is not in the catalogue, so pibake cannot check it: pass --sha256 with the digest "
                "its publisher gives (the .sha256 file next to the image), or --insecure-no-verify to take it unchecked"
            )
        return Source(url=url, sha256=digest, release=None)
    if catalogue is None:
        catalogue = oslist.load(catalogue_url, refresh=refresh_catalogue, session=session)
    entry = catalogue.lookup(release or oslist.DEFAULT_RELEASE)
    archive_kind(entry.filename)
    if entry.sha256 and digest and entry.sha256 != digest:
        raise UsageError(
            f"--sha256 {digest} contradicts the OS list's {entry.sha256} for {entry.name}; "
            "drop --sha256 to use the list's, or give the URL with --url"
        )
    checked = entry.sha256 or digest
    if checked is None and entry.image_sha256 is None and not insecure_no_verify:
        raise Refused(
            f"the OS list gives no sha256 for {entry.name}, of the archive or of the image: confirm one with "
            f"--sha256 (from {entry.url}.sha256), or pass --insecure-no-verify"
        )
    return Source(
        url=entry.url,
        sha256=checked,
        release=entry.name,
        size=entry.size,
        image_sha256=entry.image_sha256,
        image_size=entry.image_size,
        entry=entry,
    )


def looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:64].lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml", b"<body"))


def check_head(head: bytes, kind: Kind | None, url: str) -> None:
    """Refuse a body that is an HTML page or not the archive the name promises."""
    if looks_like_html(head):
        raise PibakeError(
            f"{url} answered with an HTML page, not the file (an error or login page?); check the URL in a browser"
        )
    magics = _MAGIC[kind] if kind else ()
    if magics and head and not head.startswith(magics):
        raise VerificationFailed(f"{url} is not a {kind} archive (it starts with {head[:8]!r}); check the URL")


# ---------------------------------------------------------------- download


class _Retry(Exception):
    """The transfer stopped early; the next attempt resumes from what is on disk."""


def transfer(
    url: str,
    part: Path,
    *,
    kind: Kind | None,
    retries: int = 3,
    timeout: float = 30.0,
    session: requests.Session | None = None,
) -> int:
    """Download URL into PART, resuming from PART's current length; return the final size.

    A cut connection is retried RETRIES times, each attempt asking only for the missing
    bytes. HTTP errors and HTML pages are not retried: they are final answers.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    http = session or requests.Session()
    http.headers.setdefault("User-Agent", f"pibake/{__version__}")
    last_error = ""
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        try:
            return _attempt(http, url, part, have, kind=kind, timeout=timeout)
        except _Retry as e:
            last_error = str(e)
        except (requests.ConnectionError, requests.Timeout) as e:
            last_error = f"{type(e).__name__}: {e}"
        got = part.stat().st_size if part.exists() else 0
        if attempt < retries:
            log.warning(
                "%s: transfer stopped at %.1f MiB (%s); resuming (attempt %d of %d)",
                part.name,
                got / MIB,
                last_error,
                attempt + 2,
                retries + 1,
            )
            time.sleep(min(0.5 * (attempt + 1), 5.0))
    got = part.stat().st_size if part.exists() else 0
    raise PibakeError(
        f"downloading {url} failed after {retries + 1} attempts ({last_error}); {got / MIB:.1f} MiB are kept "
        f"in {part}: run the same command again to resume"
    )


def _raw_chunks(resp: requests.Response) -> Iterator[bytes]:
    """The body as the server sent it: no content decoding, so that what is stored (and resumed) is the file.

    A server may label an .img.gz ``Content-Encoding: gzip`` (Apache's AddEncoding does): requests
    would then hand over the decompressed image, and a Range request would count bytes of the wrong
    stream.
    """
    for chunk in resp.raw.stream(NET_CHUNK, decode_content=False):
        if chunk:
            yield chunk


def _attempt(http: requests.Session, url: str, part: Path, have: int, *, kind: Kind | None, timeout: float) -> int:
    # identity: ask for the file's own bytes; whatever the server labels them, they are stored undecoded.
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    with http.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        if resp.status_code == 416 and have:
            # The server has no bytes past ours: PART is complete or longer than the file.
            # The checksum decides which; a wrong PART is then deleted.
            total = _content_range_total(resp.headers.get("Content-Range", ""))
            if total == have:
                return have
            log.warning("%s: the server refused to resume at %d bytes; starting again", part.name, have)
            part.unlink()
            raise _Retry("range not satisfiable")
        if resp.status_code >= 400:
            reason = resp.reason or ""
            hint = " (the release may have moved: check the URL)" if resp.status_code in (403, 404, 410) else ""
            raise PibakeError(f"{url}: HTTP {resp.status_code} {reason}{hint}")
        content_type = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type in ("text/html", "application/xhtml+xml"):
            raise PibakeError(
                f"{url} answered with an HTML page ({content_type}), not the file "
                "(an error or login page?); check the URL in a browser"
            )
        if resp.status_code == 206:
            start = _content_range_start(resp.headers.get("Content-Range", ""))
            if start != have:
                raise VerificationFailed(f"{url}: asked to resume at byte {have}, the server sent from byte {start}")
            mode = "ab"
        else:
            if have:
                log.info("%s: the server does not resume downloads; starting again from zero", part.name)
            have, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None and length.isdigit() else None
        done = have
        with Meter(part.name.removesuffix(".part"), total, logger=log, interval=PROGRESS_INTERVAL, start=have) as meter:
            try:
                chunks = _raw_chunks(resp)
                first = next(chunks, b"")
                if have == 0:
                    # Before a byte is written: an HTML page must not become a .part to resume.
                    check_head(first, kind, url)
                with part.open(mode) as out:
                    for chunk in itertools.chain([first], chunks):
                        try:
                            out.write(chunk)
                        except OSError as e:
                            raise _write_failed(part, e) from e
                        done += len(chunk)
                        meter.update(done)
                    try:
                        out.flush()
                    except OSError as e:
                        raise _write_failed(part, e) from e
            except (urllib3.exceptions.HTTPError, requests.RequestException) as e:
                raise _Retry(f"{type(e).__name__}: {e}") from e
    if total is not None and done < total:
        raise _Retry(f"got {done} of {total} bytes")
    meter.finish()
    return done


def _write_failed(part: Path, e: OSError) -> PibakeError:
    room = _free_space_hint(part.parent, e)
    return PibakeError(
        f"writing the download to {part} failed: {e.strerror}.{room} What reached the disk "
        f"({part.stat().st_size / MIB if part.exists() else 0:.1f} MiB) is kept: run the same command again to resume"
    )


def _free_space_hint(directory: Path, e: OSError) -> str:
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
        return ""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return f" The disk holding {directory} is full: make room there."
    return f" The disk holding {directory} is full ({free / MIB:.0f} MiB free): make room there."


def _content_range_start(value: str) -> int:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value)
    return int(m.group(1)) if m else -1


def _content_range_total(value: str) -> int | None:
    m = re.match(r"bytes (?:\*|\d+-\d+)/(\d+)", value)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------- decompression


class _Unpack(Exception):
    """Why an archive could not be unpacked: the error to raise, built where the cause is known."""

    def __init__(self, error: PibakeError) -> None:
        super().__init__(str(error))
        self.error = error


@contextmanager
def _open_archive(archive: Path, kind: Kind) -> Iterator[IO[bytes]]:
    if kind == "xz":
        with lzma.open(archive, "rb") as f:
            yield f
    elif kind == "gz":
        with gzip.open(archive, "rb") as f:
            yield f  # type: ignore[misc]
    elif kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            images = [i for i in zf.infolist() if i.filename.lower().endswith(".img") and not i.is_dir()]
            if len(images) != 1:
                names = ", ".join(i.filename for i in zf.infolist()) or "nothing"
                raise _Unpack(
                    UsageError(
                        f"{archive.name}: pibake takes a zip holding exactly one .img, and this one holds {names}. "
                        "Unzip it yourself and give the image you mean to `pibake image prepare IMAGE`"
                    )
                )
            with zf.open(images[0]) as f:
                yield f
    else:
        with archive.open("rb") as f:
            yield f


def decompress(archive: Path, kind: Kind, out: Path) -> tuple[str, int]:
    """Stream ARCHIVE into OUT, every byte written (zeros too); return OUT's sha256 and size.

    An archive knows nothing of holes, so none is made here: a hole in place of written zeros
    would leave a card's old bytes there when it is flashed with a block map. Holes come later,
    where the image's filesystems say the space is free (``pibake.disk.sparse.match_free_space``).
    Every way of failing is a PibakeError: the archive's own faults, and the disk filling up.
    """
    digest = hashlib.sha256()
    pos = 0
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with _open_archive(archive, kind) as src:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                try:
                    _write_all(fd, chunk)
                except OSError as e:
                    raise _Unpack(_unpack_write_failed(archive, out, pos, e)) from e
                pos += len(chunk)
    except _Unpack as e:
        raise e.error from e.__cause__
    except EOFError as e:
        raise VerificationFailed(f"{archive.name} is truncated: it ends before its last block ({e})") from e
    except (lzma.LZMAError, gzip.BadGzipFile, zlib.error, zipfile.BadZipFile) as e:
        raise VerificationFailed(f"{archive.name} is corrupt or truncated ({type(e).__name__}: {e})") from e
    except (NotImplementedError, RuntimeError) as e:  # zipfile: a method it lacks (deflate64), or encryption
        raise UsageError(
            f"{archive.name}: Python's zipfile cannot unpack it ({e}). Unzip it with a tool that can "
            "(7z, unzip) and give the image to `pibake image prepare IMAGE`"
        ) from e
    except OSError as e:
        raise PibakeError(f"reading {archive.name} to unpack it failed: {e.strerror or e}") from e
    finally:
        os.close(fd)
    return digest.hexdigest(), pos


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _unpack_write_failed(archive: Path, out: Path, pos: int, e: OSError) -> PibakeError:
    room = _free_space_hint(out.parent, e)
    return PibakeError(
        f"unpacking {archive.name} failed after writing {pos / MIB:.0f} MiB of the image to {out.parent}: "
        f"{e.strerror}.{room} The whole image must fit there before pibake leaves its free space as holes"
    )


# ---------------------------------------------------------------- the whole step


def _unpack(src: Source, archive: Path, archive_sha256: str, tmp: Path) -> None:
    """Decompress ARCHIVE into TMP/image.img, check it is a disk image, punch its free zeros, write meta.json."""
    log.info("%s: decompressing", src.filename)
    t0 = time.monotonic()
    image = tmp / "image.img"
    image_sha256, size = decompress(archive, src.kind, image)
    # Before anything else looks at it: the image the OS list promises, to the byte.
    if src.image_size is not None and size != src.image_size:
        raise VerificationFailed(
            f"{src.filename} unpacks to {size} bytes where the OS list gives {src.image_size} (extract_size): "
            "not the published image; nothing was cached"
        )
    if src.image_sha256 is not None and image_sha256 != src.image_sha256:
        raise VerificationFailed(
            f"the image in {src.filename} has sha256 {image_sha256} where the OS list gives {src.image_sha256} "
            "(extract_sha256): not the published image; nothing was cached"
        )
    with image.open("rb") as f:
        try:
            parse_mbr(f.read(512))
        except PibakeError as e:
            raise VerificationFailed(f"{src.filename} does not hold a disk image: {e}") from e
    match_free_space(image)
    log.info("%s: %.0f MiB image in %.1f s", src.filename, size / MIB, time.monotonic() - t0)
    meta = {
        "url": src.url,
        "release": src.release,
        "archive": src.filename,
        "archive_sha256": archive_sha256,
        "verified": src.verified,
        "archive_verified": src.sha256 is not None,
        "image_verified": src.image_sha256 is not None,
        "image": image_name(src.filename),
        "image_sha256": image_sha256,
        "size": size,
        **(
            {
                "release_date": src.entry.release_date,
                "init_format": src.entry.init_format,
                "devices": list(src.entry.devices),
            }
            if src.entry
            else {}
        ),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _archive_fate(archive: Path, *, verified: bool) -> str:
    """What became of an archive that did not unpack, for the end of the error."""
    if verified:
        # Its bytes are the published ones: a new download would bring the same bytes and the same failure.
        return (
            f"The archive matched its sha256, so downloading it again cannot help: it is kept in {archive}, and the "
            f"next run unpacks it from there. If the archive itself is at fault, choose another release, and delete "
            f"{archive.parent} to free its space"
        )
    shutil.rmtree(archive.parent, ignore_errors=True)
    return (
        "The archive had no published sha256 of its own (--insecure-no-verify, or an OS list entry that gives only "
        "the image's), so it was deleted: the next run downloads it again"
    )


def image_cache_dir(archive_sha256: str) -> Path:
    return cache_root() / "raspios" / archive_sha256


def _cached_image(src: Source) -> Path | None:
    """The cache entry holding SRC's image: by the archive's digest, or else by the image's (checked when cached)."""
    if src.sha256 is not None:
        top = image_cache_dir(src.sha256)
        return top if (top / "meta.json").exists() else None
    if src.image_sha256 is None:
        return None
    for meta_file in sorted((cache_root() / "raspios").glob("*/meta.json")):
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("image_sha256") == src.image_sha256 and meta.get("verified"):
            return meta_file.parent
    return None


def fetch(
    *,
    release: str | None = None,
    url: str | None = None,
    sha256: str | None = None,
    insecure_no_verify: bool = False,
    output: Path | None = None,
    output_dir: Path | None = None,
    retries: int = 3,
    timeout: float = 30.0,
    catalogue: Catalogue | None = None,
    catalogue_url: str | None = None,
    refresh_catalogue: bool = False,
    session: requests.Session | None = None,
) -> FetchedImage:
    """Download, verify and decompress a Raspberry Pi OS image into the cache; copy it to OUTPUT if given.

    A release comes from CATALOGUE, or from the OS list at CATALOGUE_URL (default: Raspberry Pi's,
    cached a day; REFRESH_CATALOGUE fetches it again). Without OUTPUT but with OUTPUT_DIR, the copy
    goes to OUTPUT_DIR/NAME.img (NAME from the archive's).
    """
    t0 = time.monotonic()
    src = resolve(
        release=release,
        url=url,
        sha256=sha256,
        insecure_no_verify=insecure_no_verify,
        catalogue=catalogue,
        catalogue_url=catalogue_url,
        refresh_catalogue=refresh_catalogue,
        session=session,
    )
    if output is None and output_dir is not None:
        output = output_dir / image_name(src.filename)
    found = _cached_image(src)
    cached = found is not None
    if found is not None:
        top = found
        log.info("%s: cached (%s)", src.filename, top)
    else:
        top = _download_and_unpack(src, retries=retries, timeout=timeout, session=session)
    meta = json.loads((top / "meta.json").read_text())
    if src.image_sha256 is not None and meta["image_sha256"] != src.image_sha256:
        # The archive's digest matched a cached unpacking whose image the OS list disowns.
        raise VerificationFailed(
            f"the cached image of {src.filename} ({top}) has sha256 {meta['image_sha256']}, the OS list says "
            f"{src.image_sha256} (extract_sha256): the list contradicts its own archive digest. Delete {top} "
            "and run again; if it fails the same way, report it to the list's publisher"
        )
    path = top / "image.img"
    if output is not None:
        path = publish(path, output, meta["image_sha256"])
    return FetchedImage(
        path=path,
        image_sha256=meta["image_sha256"],
        archive_sha256=meta["archive_sha256"],
        url=src.url,
        release=src.release,
        verified=bool(meta["verified"]),
        cached=cached,
        size=int(meta["size"]),
        seconds=time.monotonic() - t0,
        init_format=src.entry.init_format if src.entry else None,
        devices=src.entry.devices if src.entry else (),
        release_date=src.entry.release_date if src.entry else None,
    )


def download(
    url: str,
    *,
    sha256: str | None,
    insecure_no_verify: bool = False,
    checked_later: str | None = None,
    size: int | None = None,
    retries: int = 3,
    timeout: float = 30.0,
    session: requests.Session | None = None,
) -> Path:
    """Download URL into the cache and return the file, once its sha256 matched SHA256.

    A file already in the cache under that digest is not downloaded again. A partial
    download is resumed, by this call's retries and by a later call. Without SHA256
    (only with INSECURE_NO_VERIFY, or CHECKED_LATER saying what the caller checks instead) the
    file is kept under the digest it turned out to have.
    """
    digest = normalise_sha256(sha256) if sha256 else None
    if digest is None and not insecure_no_verify and not checked_later:
        raise Refused(f"refusing to download {url} without a sha256 to check it against")
    name = url_filename(url)
    if digest is not None and (done := cache_root() / "files" / digest / name).is_file():
        log.info("%s: cached", name)
        return done
    key = digest or "unverified-" + recipe_hash({"url": url})[:16]
    part = cache_root() / "downloads" / f"{key}-{name}.part"
    if part.exists():
        log.info("%s: resuming from %.1f MiB already downloaded", name, part.stat().st_size / MIB)
    log.info("downloading %s", url)
    kind = archive_kind(name) if name.lower().endswith((".xz", ".gz", ".zip", ".img")) else None
    got = transfer(url, part, kind=kind, retries=retries, timeout=timeout, session=session)
    if size is not None and got != size:
        part.unlink()
        raise VerificationFailed(
            f"{name}: downloaded {got} bytes where the release has {size}; the file was deleted, run the command again"
        )
    actual = sha256_file(part)
    if digest is not None and actual != digest:
        part.unlink()
        raise VerificationFailed(
            f"sha256 mismatch for {url}: expected {digest}, got {actual}. The download is corrupt or not the "
            "published file; it was deleted and nothing was cached. Run the command again; if it fails the "
            "same way, the catalogue entry or --sha256 is wrong"
        )
    if digest is None and checked_later:
        log.info("%s: no published sha256 of its own (%s); its sha256 is %s", name, checked_later, actual)
    elif digest is None:
        log.warning("%s was NOT verified (--insecure-no-verify); its sha256 is %s", name, actual)
    done = cache_root() / "files" / actual / name
    done.parent.mkdir(parents=True, exist_ok=True)
    part.rename(done)
    return done


def _download_and_unpack(src: Source, *, retries: int, timeout: float, session: requests.Session | None) -> Path:
    archive = download(
        src.url,
        sha256=src.sha256,
        insecure_no_verify=not src.verified,
        checked_later="the image it unpacks to is checked against extract_sha256" if src.image_sha256 else None,
        size=src.size,
        retries=retries,
        timeout=timeout,
        session=session,
    )
    actual = archive.parent.name
    top = image_cache_dir(actual)
    tmp = top.with_name(top.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        try:
            tmp.mkdir(parents=True)
            _unpack(src, archive, actual, tmp)
            shutil.rmtree(top, ignore_errors=True)
            tmp.rename(top)
        except OSError as e:  # the cache's own files: meta.json, the rename
            raise PibakeError(
                f"unpacking {src.filename} into {tmp} failed: {e.strerror}.{_free_space_hint(tmp.parent, e)}"
            ) from e
    except PibakeError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        e.args = (f"{e}\n{_archive_fate(archive, verified=src.sha256 is not None)}",)  # the same kind
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # Ctrl-C: the archive stays for the next run
        raise
    # The image is what is kept: the archive would only double the space.
    shutil.rmtree(archive.parent, ignore_errors=True)
    return top
