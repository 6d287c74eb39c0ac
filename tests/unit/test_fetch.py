"""The pure parts of image fetching: catalogue resolution, names, digests, decompression, sniffing."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import lzma
import os
import re
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pibake.disk import sparse
from pibake.errors import PibakeError, Refused, UsageError, VerificationFailed
from pibake.image import catalogue, fetch

MIB = 1 << 20


def _catalogue(*releases: catalogue.Release) -> catalogue.Catalogue:
    return catalogue.Catalogue({r.name: r for r in releases}, "file:///os_list.json", datetime.now(UTC))


def _release(name: str, sha256: str | None, image_sha256: str | None = None, **kw: object) -> catalogue.Release:
    parsed = catalogue.name_from_filename(f"2026-06-18-raspios-{name}.img.xz")
    assert parsed is not None
    _, suite, arch, variant, date = parsed
    return catalogue.Release(
        name=name, suite=suite, arch=arch, variant=variant, url=f"https://example.invalid/{date}-raspios-{name}.img.xz",
        sha256=sha256, size=None, image_sha256=image_sha256, image_size=None, release_date=date, description=name,
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_the_default_release_is_the_current_lite_armhf() -> None:
    cat = _catalogue(
        _release("trixie-armhf-lite", None, "ab" * 32, init_format="cloudinit-rpi"),
        _release("bookworm-armhf-lite", None, "cd" * 32),
        _release("trixie-arm64-lite", None, "ef" * 32),
    )
    src = fetch.resolve(catalogue=cat)
    assert src.release == "trixie-armhf-lite" and catalogue.DEFAULT_RELEASE == "latest-armhf-lite"
    assert src.filename == "2026-06-18-raspios-trixie-armhf-lite.img.xz" and src.kind == "xz"
    assert src.sha256 is None and src.image_sha256 == "ab" * 32 and src.verified
    assert src.entry is not None and src.entry.init_format == "cloudinit-rpi"


def test_a_url_needs_a_digest_or_an_explicit_opt_out() -> None:
    url = "https://example.invalid/images/x.img.xz"
    with pytest.raises(PibakeError, match="--insecure-no-verify"):
        fetch.resolve(url=url)
    assert fetch.resolve(url=url, insecure_no_verify=True).sha256 is None
    assert fetch.resolve(url=url, sha256="SHA256:" + "AB" * 32).sha256 == "ab" * 32
    with pytest.raises(PibakeError, match="not both"):
        fetch.resolve(url=url, release="trixie-armhf-lite", sha256="ab" * 32)
    with pytest.raises(PibakeError, match="http"):
        fetch.resolve(url="ftp://example.invalid/x.img.xz", sha256="ab" * 32)


def test_catalogue_digest_wins_and_contradictions_are_errors() -> None:
    cat = _catalogue(_release("trixie-armhf-lite", "aa" * 32), _release("trixie-arm64-lite", None))
    assert fetch.resolve(release="trixie-armhf-lite", catalogue=cat).sha256 == "aa" * 32
    with pytest.raises(PibakeError, match="contradicts"):
        fetch.resolve(release="trixie-armhf-lite", sha256="bb" * 32, catalogue=cat)
    with pytest.raises(Refused, match=r"arm64-lite\.img\.xz\.sha256"):
        fetch.resolve(release="trixie-arm64-lite", catalogue=cat)
    assert fetch.resolve(release="trixie-arm64-lite", sha256="cc" * 32, catalogue=cat).sha256 == "cc" * 32
    with pytest.raises(UsageError, match=r"unknown release 'nope'.*trixie-arm64-lite"):
        fetch.resolve(release="nope", catalogue=cat)


@pytest.mark.parametrize(
    ("name", "kind", "image"),
    [
        ("2024-10-22-raspios-bullseye-armhf-lite.img.xz", "xz", "2024-10-22-raspios-bullseye-armhf-lite.img"),
        ("2020-05-27-raspios-buster-lite-armhf.zip", "zip", "2020-05-27-raspios-buster-lite-armhf.img"),
        ("x.img.gz", "gz", "x.img"),
        ("x.img", "raw", "x.img"),
    ],
)
def test_archive_kinds_and_image_names(name: str, kind: str, image: str) -> None:
    assert fetch.archive_kind(name) == kind
    assert fetch.image_name(name) == image


def test_unknown_archive_kind_is_refused() -> None:
    with pytest.raises(PibakeError, match=r"\.img\.xz"):
        fetch.archive_kind("x.tar.bz2")


def test_sha256_file_parsing() -> None:
    digest = "45dd65d579ec2b106a1e3181032144406eab61df892fcd2da8d83382fa4f7e51"
    assert fetch.parse_sha256_file(f"{digest}  a.img.xz\n", "a.img.xz") == digest
    assert fetch.parse_sha256_file(f"{'0' * 64}  other\n{digest} *a.img.xz\n", "a.img.xz") == digest
    with pytest.raises(PibakeError):
        fetch.parse_sha256_file(f"{digest}  b.img.xz\n", "a.img.xz")
    with pytest.raises(PibakeError, match="not a sha256"):
        fetch.normalise_sha256("xyz")


def test_html_and_wrong_magic_are_refused() -> None:
    for page in (b"<!DOCTYPE html><html>", b"\n  <html lang=en>", b"<?xml version='1.0'?><html"):
        with pytest.raises(PibakeError, match="HTML page"):
            fetch.check_head(page, "xz", "http://x/a.img.xz")
    with pytest.raises(PibakeError, match="not a xz archive"):
        fetch.check_head(b"PK\x03\x04rest", "xz", "http://x/a.img.xz")
    fetch.check_head(b"\xfd7zXZ\x00rest", "xz", "http://x/a.img.xz")
    fetch.check_head(b"anything", None, "http://x/buildroot.tar.bz2")


def _disk(size: int = 3 * MIB) -> bytes:
    """A 'disk': an MBR signature, a block of data in the middle, zeros elsewhere."""
    data = bytearray(size)
    data[510:512] = b"\x55\xaa"
    data[MIB : MIB + 4096] = os.urandom(4096)
    return bytes(data)


def _compress(kind: str, data: bytes) -> bytes:
    if kind == "xz":
        return lzma.compress(data, preset=0)
    if kind == "gz":
        return gzip.compress(data, compresslevel=1)
    if kind == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("2020-05-27-raspios-buster-lite-armhf.img", data)
        return buf.getvalue()
    return data


@pytest.mark.parametrize("kind", ["xz", "gz", "zip", "raw"])
def test_decompression_writes_every_byte_zeros_included(tmp_path: Path, kind: fetch.Kind) -> None:
    disk = _disk()
    archive = tmp_path / "a"
    archive.write_bytes(_compress(kind, disk))
    out = tmp_path / "out.img"
    digest, size = fetch.decompress(archive, kind, out)
    assert out.read_bytes() == disk
    assert (digest, size) == (hashlib.sha256(disk).hexdigest(), len(disk))
    # An archive says nothing of holes: its zeros are written, so a block map of the image maps them.
    fd = os.open(out, os.O_RDONLY)
    try:
        assert list(sparse.data_ranges(fd, 0, size)) == [(0, size)]
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["xz", "gz", "zip"])
def test_a_truncated_archive_is_an_error(tmp_path: Path, kind: fetch.Kind) -> None:
    blob = _compress(kind, _disk())
    archive = tmp_path / "a"
    archive.write_bytes(blob[: len(blob) * 2 // 3])
    with pytest.raises(PibakeError, match="truncated"):
        fetch.decompress(archive, kind, tmp_path / "out.img")


def test_corrupt_xz_is_an_error(tmp_path: Path) -> None:
    blob = bytearray(_compress("xz", _disk()))
    blob[len(blob) // 2] ^= 0xFF
    archive = tmp_path / "a"
    archive.write_bytes(bytes(blob))
    with pytest.raises(PibakeError, match="corrupt"):
        fetch.decompress(archive, "xz", tmp_path / "out.img")


@pytest.mark.parametrize("names", [["README.txt"], ["a.img", "b.img"]])
def test_a_zip_without_exactly_one_image_is_refused(tmp_path: Path, names: list[str]) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in names:
            zf.writestr(name, _disk())
    archive = tmp_path / "a.zip"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(UsageError, match=r"exactly one \.img.*" + re.escape(", ".join(names))) as err:
        fetch.decompress(archive, "zip", tmp_path / "out.img")
    assert "pibake image prepare" in str(err.value)


def _zip_with(method: int | None = None, flags: int | None = None) -> bytes:
    """A zip of one image whose local and central headers claim METHOD (and FLAGS) instead of deflate."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("2020-05-27-raspios-buster-lite-armhf.img", _disk())
    blob = bytearray(buf.getvalue())
    for magic, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = blob.find(magic)
        if method is not None:
            blob[at + method_at : at + method_at + 2] = method.to_bytes(2, "little")
        if flags is not None:
            blob[at + flag_at : at + flag_at + 2] = flags.to_bytes(2, "little")
    return bytes(blob)


@pytest.mark.parametrize(("method", "flags"), [(9, None), (None, 1)], ids=["deflate64", "encrypted"])
def test_a_zip_python_cannot_read_is_a_clear_error(tmp_path: Path, method: int | None, flags: int | None) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip_with(method, flags))
    with pytest.raises(UsageError, match="cannot unpack it") as err:
        fetch.decompress(archive, "zip", tmp_path / "out.img")
    assert "unzip" in str(err.value).lower()


def test_a_corrupt_gz_is_an_error(tmp_path: Path) -> None:
    blob = bytearray(_compress("gz", os.urandom(MIB)))
    blob[len(blob) // 2] ^= 0xFF
    archive = tmp_path / "a"
    archive.write_bytes(bytes(blob))
    with pytest.raises(VerificationFailed, match="corrupt"):
        fetch.decompress(archive, "gz", tmp_path / "out.img")


def test_a_full_disk_while_decompressing_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "a"
    archive.write_bytes(_compress("xz", _disk()))
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        if fd > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(PibakeError, match=f"No space left on device. The disk holding {tmp_path} is full"):
        fetch.decompress(archive, "xz", tmp_path / "out.img")


def test_download_refuses_to_run_without_a_digest() -> None:
    with pytest.raises(PibakeError, match="without a sha256"):
        fetch.download("https://example.invalid/buildroot-2026.08.tar.gz", sha256=None)
