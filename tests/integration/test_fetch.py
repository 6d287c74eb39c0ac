"""`pibake image fetch` against a local HTTP server that serves a release shaped like Raspberry Pi's.

The server speaks HTTP/1.1 with Range requests, and can cut a response mid-body, answer
404, or answer with an HTML page, so that every failure a real download meets is met here.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from pibake.errors import PibakeError, Refused, UsageError, VerificationFailed
from pibake.image import fetch
from pibake.util.cache import sha256_file
from tests.conftest import run_cli
from tests.integration import oslist, raspios

RELEASE_DIR = "/raspios_oldstable_lite_armhf/images/raspios_oldstable_lite_armhf-2024-10-28"
ARCHIVE = "2024-10-22-raspios-bullseye-armhf-lite.img.xz"
HTML = b"<!DOCTYPE html>\n<html><head><title>Raspberry Pi</title></head><body>Please log in</body></html>\n"


@dataclass
class Route:
    body: bytes
    content_type: str = "application/x-xz"
    status: int = 200
    cut_after: int | None = None  # close the connection after this many bytes of the body...
    cuts: int = 0  # ...in this many responses, then answer in full
    ranges: bool = True  # honour Range requests
    headers: dict[str, str] = field(default_factory=dict)  # sent as they are (Content-Encoding, say)


@dataclass
class Site:
    url: str = ""
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    accept_encodings: list[str | None] = field(default_factory=list)

    def gets(self, path: str) -> list[str | None]:
        """The Range header of every GET of PATH."""
        return [rng for p, rng in self.requests if p == path]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        site = self.server.site
        rng = self.headers.get("Range")
        site.requests.append((self.path, rng))
        site.accept_encodings.append(self.headers.get("Accept-Encoding"))
        route = site.routes.get(self.path)
        if route is None:
            self._send(404, "text/html", b"<html><body><h1>404 Not Found</h1></body></html>")
            return
        body, start = route.body, 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and route.ranges:
            start = int(m.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(route.status)
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("Accept-Ranges", "bytes" if route.ranges else "none")
        for name, value in route.headers.items():
            self.send_header(name, value)
        self.end_headers()
        payload = body[start:]
        if route.cuts and route.cut_after is not None:
            route.cuts -= 1
            self.wfile.write(payload[: route.cut_after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(payload)

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    site: Site


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> raspios.Release:
    return raspios.build_release(tmp_path_factory.mktemp("release"))


@pytest.fixture
def site(release: raspios.Release, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = _Server(("127.0.0.1", 0), Handler)
    server.site = Site(url=f"http://127.0.0.1:{server.server_address[1]}")
    data = release.archive.read_bytes()
    server.site.routes[f"{RELEASE_DIR}/{ARCHIVE}"] = Route(data)
    server.site.routes[f"{RELEASE_DIR}/{ARCHIVE}.sha256"] = Route(
        release.sha256_file_text.encode(), content_type="text/plain"
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.site
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _url(site: Site, path: str = f"{RELEASE_DIR}/{ARCHIVE}") -> str:
    return site.url + path


def _published_sha256(site: Site) -> str:
    """What a user copies from the .sha256 file next to the release."""
    text = requests.get(_url(site) + ".sha256", timeout=10).text
    return fetch.parse_sha256_file(text, ARCHIVE)


def _leftovers(cache: Path) -> list[Path]:
    """Anything a later run could take for a good download or image."""
    return [p for p in cache.rglob("*") if p.is_file() and "ssh" not in p.parts]


def test_happy_path_verifies_decompresses_and_caches(
    site: Site, release: raspios.Release, isolated_cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "raspios.img"
    res = run_cli(["image", "fetch", "--url", _url(site), "--sha256", _published_sha256(site), "-o", str(out)])
    assert res.code == 0, res.err
    assert "verified" in res.out
    assert sha256_file(out) == release.image_sha256
    assert out.stat().st_size == raspios.SIZE
    assert raspios.allocated_bytes(out) < raspios.SIZE // 2  # every byte written, then free zeros punched
    assert (tmp_path / "raspios.img.sha256").read_text() == f"{release.image_sha256}  raspios.img\n"
    cached = fetch.image_cache_dir(release.archive_sha256)
    assert (cached / "image.img").exists()
    assert not list((isolated_cache / "downloads").glob("*.part"))

    # The second time nothing is downloaded.
    gets = len(site.requests)
    res = run_cli(["image", "fetch", "--url", _url(site), "--sha256", release.archive_sha256, "-o", str(out)])
    assert res.code == 0, res.err
    assert "cached" in res.out
    assert len(site.requests) == gets


def test_a_cut_connection_is_resumed_with_a_range_request(
    site: Site, release: raspios.Release, isolated_cache: Path, tmp_path: Path
) -> None:
    path = f"{RELEASE_DIR}/{ARCHIVE}"
    cut = len(site.routes[path].body) * 2 // 5
    site.routes[path].cut_after, site.routes[path].cuts = cut, 1
    got = fetch.fetch(url=_url(site), sha256=release.archive_sha256, output=tmp_path / "r.img")
    assert got.image_sha256 == release.image_sha256
    first, second = site.gets(path)
    # It asks for what it lacks: from what reached the disk (the chunk being read when the
    # connection broke is lost), not from zero.
    assert first is None and second is not None
    assert 0 < int(second.removeprefix("bytes=").rstrip("-")) <= cut


def test_an_interrupted_run_is_resumed_by_the_next_run(
    site: Site, release: raspios.Release, isolated_cache: Path, tmp_path: Path
) -> None:
    path = f"{RELEASE_DIR}/{ARCHIVE}"
    cut = len(site.routes[path].body) // 3
    site.routes[path].cut_after, site.routes[path].cuts = cut, 1
    args = ["image", "fetch", "--url", _url(site), "--sha256", release.archive_sha256, "-o", str(tmp_path / "i.img")]
    res = run_cli([*args, "--retries", "0"])
    assert res.code == PibakeError.exit_code
    assert "run the same command again to resume" in res.err
    (part,) = (isolated_cache / "downloads").glob("*.part")
    kept = part.stat().st_size
    assert 0 < kept <= cut
    assert not (tmp_path / "i.img").exists()
    res = run_cli(args)
    assert res.code == 0, res.err
    assert site.gets(path) == [None, f"bytes={kept}-"]
    assert sha256_file(tmp_path / "i.img") == release.image_sha256


def test_a_server_without_ranges_restarts_from_zero(
    site: Site, release: raspios.Release, isolated_cache: Path, tmp_path: Path
) -> None:
    path = f"{RELEASE_DIR}/{ARCHIVE}"
    route = site.routes[path]
    route.cut_after, route.cuts, route.ranges = len(route.body) // 5, 1, False
    got = fetch.fetch(url=_url(site), sha256=release.archive_sha256, output=tmp_path / "n.img")
    assert got.image_sha256 == release.image_sha256
    first, second = site.gets(path)
    # It asked to resume, got the whole file (200), and started over rather than append it.
    assert first is None and second is not None and second.startswith("bytes=")


def test_a_bad_checksum_leaves_nothing_behind(site: Site, isolated_cache: Path, tmp_path: Path) -> None:
    wrong = "0" * 64
    res = run_cli(["image", "fetch", "--url", _url(site), "--sha256", wrong, "-o", str(tmp_path / "b.img")])
    assert res.code == VerificationFailed.exit_code
    assert "sha256 mismatch" in res.err and wrong in res.err
    assert _leftovers(isolated_cache) == []
    assert not (tmp_path / "b.img").exists()


def test_a_truncated_xz_is_refused_even_with_a_matching_checksum(
    site: Site, release: raspios.Release, isolated_cache: Path, tmp_path: Path
) -> None:
    data = release.archive.read_bytes()
    truncated = data[: len(data) - 4096]
    path = f"{RELEASE_DIR}/truncated.img.xz"
    site.routes[path] = Route(truncated)
    res = run_cli(
        [
            "image", "fetch", "--url", _url(site, path), "--sha256", hashlib.sha256(truncated).hexdigest(),
            "-o", str(tmp_path / "t.img"),
        ]
    )  # fmt: skip
    assert res.code == VerificationFailed.exit_code
    assert "truncated" in res.err
    # The digest matched: downloading again would give the same bytes, so the archive is kept
    # (and said to be), and nothing else is left behind.
    (kept,) = _leftovers(isolated_cache)
    assert kept == isolated_cache / "files" / hashlib.sha256(truncated).hexdigest() / "truncated.img.xz"
    assert f"kept in {kept}" in res.err
    assert not (tmp_path / "t.img").exists()
    gets = len(site.gets(path))
    again = run_cli(["image", "fetch", "--url", _url(site, path), "--sha256", hashlib.sha256(truncated).hexdigest()])
    assert again.code == VerificationFailed.exit_code and "truncated" in again.err
    assert len(site.gets(path)) == gets, "a verified archive was downloaded again"


def test_404_is_a_clear_error(site: Site, isolated_cache: Path, tmp_path: Path) -> None:
    res = run_cli(["image", "fetch", "--url", _url(site, "/gone.img.xz"), "--sha256", "1" * 64, "-o", str(tmp_path)])
    assert res.code == PibakeError.exit_code
    assert "HTTP 404" in res.err and "moved" in res.err
    assert _leftovers(isolated_cache) == []


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/octet-stream"])
def test_an_html_page_is_not_taken_for_the_image(
    site: Site, isolated_cache: Path, tmp_path: Path, content_type: str
) -> None:
    # A captive portal or a login page answers 200, with or without saying it is HTML.
    site.routes["/portal.img.xz"] = Route(HTML, content_type=content_type)
    res = run_cli(["image", "fetch", "--url", _url(site, "/portal.img.xz"), "--sha256", "2" * 64, "-o", str(tmp_path)])
    assert res.code == PibakeError.exit_code
    assert "HTML page" in res.err
    assert _leftovers(isolated_cache) == []


def test_a_url_outside_the_catalogue_needs_a_digest(
    site: Site, release: raspios.Release, isolated_cache: Path, tmp_path: Path
) -> None:
    res = run_cli(["image", "fetch", "--url", _url(site), "-o", str(tmp_path / "u.img")])
    assert res.code == Refused.exit_code
    assert "--sha256" in res.err and "--insecure-no-verify" in res.err
    assert site.requests == []
    res = run_cli(["image", "fetch", "--url", _url(site), "--insecure-no-verify", "-o", str(tmp_path / "u.img")])
    assert res.code == 0, res.err
    assert "NOT VERIFIED" in res.out and release.archive_sha256 in res.out


# --- the bytes on disk are the bytes the server sent (issue 15, section 5) -------------------------------

GZ_PATH = f"{RELEASE_DIR}/2024-10-22-raspios-bullseye-armhf-lite.img.gz"


@pytest.fixture(scope="module")
def gz_archive(release: raspios.Release) -> bytes:
    return gzip.compress(release.image.read_bytes(), compresslevel=1)


def test_an_archive_labelled_content_encoding_gzip_is_stored_as_sent(
    site: Site, release: raspios.Release, gz_archive: bytes, isolated_cache: Path, tmp_path: Path
) -> None:
    # Apache with `AddEncoding gzip .gz` labels the .img.gz itself as gzip-encoded.
    site.routes[GZ_PATH] = Route(gz_archive, content_type="application/octet-stream", headers=_GZIP)
    digest = hashlib.sha256(gz_archive).hexdigest()
    got = fetch.fetch(url=_url(site, GZ_PATH), sha256=digest, output=tmp_path / "g.img")
    assert got.image_sha256 == release.image_sha256 and got.archive_sha256 == digest
    assert site.accept_encodings[-1] == "identity"


def test_a_resume_counts_the_bytes_on_disk_across_content_encoding(
    site: Site, release: raspios.Release, gz_archive: bytes, isolated_cache: Path, tmp_path: Path
) -> None:
    cut = len(gz_archive) * 2 // 5
    site.routes[GZ_PATH] = Route(gz_archive, content_type="application/x-gzip", headers=_GZIP, cut_after=cut, cuts=1)
    digest = hashlib.sha256(gz_archive).hexdigest()
    got = fetch.fetch(url=_url(site, GZ_PATH), sha256=digest, output=tmp_path / "r.img")
    assert got.image_sha256 == release.image_sha256
    first, second = site.gets(GZ_PATH)
    assert first is None and second is not None
    # Resumed from the encoded bytes that reached the disk, never from a decoded count.
    assert 0 < int(second.removeprefix("bytes=").rstrip("-")) <= cut


_GZIP = {"Content-Encoding": "gzip"}


@pytest.fixture
def small_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 16 MiB tmpfs as PIBAKE_CACHE: room for the archive (3 MiB), not for the image it holds (268 MiB)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    cache = tmp_path / "small-cache"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(cache)], check=True)
    monkeypatch.setenv("PIBAKE_CACHE", str(cache))
    try:
        yield cache
    finally:
        subprocess.run(["umount", str(cache)], check=False)


def test_a_full_disk_while_decompressing_keeps_the_verified_archive(
    site: Site, release: raspios.Release, small_cache: Path, tmp_path: Path
) -> None:
    args = ["image", "fetch", "--url", _url(site), "--sha256", release.archive_sha256, "-o", str(tmp_path / "f.img")]
    res = run_cli(args)
    assert res.code == PibakeError.exit_code, res.err
    assert "Traceback" not in res.err
    assert "no space left" in res.err.lower() and str(small_cache) in res.err
    archive = small_cache / "files" / release.archive_sha256 / ARCHIVE
    assert archive.is_file() and f"kept in {archive}" in res.err
    assert not (small_cache / "raspios").exists() or not any((small_cache / "raspios").iterdir())
    assert not (tmp_path / "f.img").exists()

    # Room made: the next run unpacks the archive it kept, without downloading it again.
    subprocess.run(["mount", "-o", "remount,size=600m", str(small_cache)], check=True)
    gets = len(site.requests)
    res = run_cli(args)
    assert res.code == 0, res.err
    assert len(site.requests) == gets
    assert sha256_file(tmp_path / "f.img") == release.image_sha256


# --- the catalogue: Raspberry Pi's OS list, served on loopback (issue 14) --------------------------------

TRIXIE_DIR = "/raspios_lite_armhf/images/raspios_lite_armhf-2026-06-19"
TRIXIE = "2026-06-18-raspios-trixie-armhf-lite.img.xz"
BOOKWORM_DIR = "/raspios_oldstable_lite_armhf/images/raspios_oldstable_lite_armhf-2026-06-19"
BOOKWORM = "2026-06-18-raspios-bookworm-armhf-lite.img.xz"
OS_LIST = "/os_list_imagingutility_v4.json"


def _serve_os_list(site: Site, release: raspios.Release, **trixie: object) -> str:
    """Serve the release's archive as trixie-armhf-lite (image digest only, as Raspberry Pi lists it) and
    bookworm-armhf-lite (archive and image digests), and the OS list naming both; TRIXIE overrides fields."""
    data = release.archive.read_bytes()
    site.routes[f"{TRIXIE_DIR}/{TRIXIE}"] = Route(data)
    site.routes[f"{BOOKWORM_DIR}/{BOOKWORM}"] = Route(data)
    fields: dict[str, object] = {
        "image_sha256": release.image_sha256,
        "image_size": raspios.SIZE,
        "download_size": len(data),
        **trixie,
    }
    served = [
        oslist.served_entry("Raspberry Pi OS Lite (32-bit)", site.url + f"{TRIXIE_DIR}/{TRIXIE}", **fields),  # type: ignore[arg-type]
        oslist.served_entry(
            "Raspberry Pi OS (Legacy, 32-bit) Lite",
            site.url + f"{BOOKWORM_DIR}/{BOOKWORM}",
            image_sha256=release.image_sha256,
            image_size=raspios.SIZE,
            download_size=len(data),
            download_sha256=release.archive_sha256,
            init_format="systemd",
        ),
    ]
    site.routes[OS_LIST] = Route(oslist.render(served), content_type="application/json")
    return site.url + OS_LIST


def test_the_default_release_is_the_current_lite_and_its_image_digest_is_checked(
    site: Site, release: raspios.Release, isolated_cache: Path, tmp_path: Path
) -> None:
    url = _serve_os_list(site, release)
    res = run_cli(["image", "fetch", "--catalogue-url", url, "-o", str(tmp_path / "d.img")])
    assert res.code == 0, res.err
    # latest-armhf-lite: trixie, the newest suite, though bookworm was released the same day.
    assert "release trixie-armhf-lite of 2026-06-18, init_format cloudinit-rpi" in res.out
    assert "verified" in res.out
    assert sha256_file(tmp_path / "d.img") == release.image_sha256
    assert site.gets(f"{TRIXIE_DIR}/{TRIXIE}") == [None]
    meta = json.loads((fetch.image_cache_dir(release.archive_sha256) / "meta.json").read_text())
    assert meta["image_verified"] and not meta["archive_verified"] and meta["init_format"] == "cloudinit-rpi"

    # Cached: found by the image's digest, and the list is not asked again within a day.
    gets = len(site.requests)
    args = ["image", "fetch", "--catalogue-url", url, "--release", "trixie-armhf-lite", "-o", str(tmp_path / "e.img")]
    res = run_cli(args)
    assert res.code == 0, res.err
    assert "cached" in res.out and len(site.requests) == gets


def test_both_digests_are_checked_for_a_release_that_lists_both(
    site: Site, release: raspios.Release, isolated_cache: Path, tmp_path: Path
) -> None:
    url = _serve_os_list(site, release)
    got = fetch.fetch(release="bookworm-armhf-lite", catalogue_url=url, output=tmp_path / "b.img")
    assert got.verified and got.init_format == "systemd" and got.release == "bookworm-armhf-lite"
    meta = json.loads((fetch.image_cache_dir(release.archive_sha256) / "meta.json").read_text())
    assert meta["archive_verified"] and meta["image_verified"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"image_sha256": "e" * 64}, "extract_sha256"),
        ({"image_size": raspios.SIZE + 512}, "extract_size"),
    ],
)
def test_an_image_that_is_not_the_listed_one_leaves_nothing_behind(
    site: Site,
    release: raspios.Release,
    isolated_cache: Path,
    tmp_path: Path,
    override: dict[str, object],
    message: str,
) -> None:
    url = _serve_os_list(site, release, **override)
    out = tmp_path / "x.img"
    res = run_cli(["image", "fetch", "--catalogue-url", url, "--release", "trixie-armhf-lite", "-o", str(out)])
    assert res.code == VerificationFailed.exit_code, res.err
    assert message in res.err and "nothing was cached" in res.err
    # The archive had no digest of its own: it goes too, so the next run downloads it again.
    assert "deleted" in res.err
    assert [p for p in _leftovers(isolated_cache) if "catalogue" not in p.parts] == []
    assert not out.exists() and not out.with_name("x.img.sha256").exists()


def test_a_release_not_in_the_list_is_a_usage_error_naming_those_that_are(
    site: Site, release: raspios.Release, isolated_cache: Path, tmp_path: Path
) -> None:
    url = _serve_os_list(site, release)
    res = run_cli(["image", "fetch", "--catalogue-url", url, "--release", "bullseye-armhf-lite"])
    assert res.code == UsageError.exit_code
    assert "unknown release 'bullseye-armhf-lite'" in res.err
    assert "trixie-arm64-lite" in res.err and "latest-armhf-lite" in res.err and "--url" in res.err
    # Ubuntu is in the list, but not a Raspberry Pi OS release.
    assert "ubuntu" not in res.err


def test_an_entry_without_any_digest_needs_the_user_to_confirm_one(
    site: Site, release: raspios.Release, isolated_cache: Path, tmp_path: Path
) -> None:
    url = _serve_os_list(site, release, image_sha256=None)
    args = ["image", "fetch", "--catalogue-url", url, "--release", "trixie-armhf-lite", "-o", str(tmp_path / "x.img")]
    res = run_cli(args)
    assert res.code == Refused.exit_code
    assert "--sha256" in res.err and f"{TRIXIE}.sha256" in res.err
    assert site.gets(f"{TRIXIE_DIR}/{TRIXIE}") == []
    res = run_cli([*args, "--sha256", release.archive_sha256])
    assert res.code == 0, res.err


def test_the_list_prints_every_raspios_release_with_the_default_marked(
    site: Site, release: raspios.Release, isolated_cache: Path
) -> None:
    url = _serve_os_list(site, release)
    res = run_cli(["image", "fetch", "--catalogue-url", url, "--list"])
    assert res.code == 0, res.err
    assert f"Raspberry Pi OS releases from {url}" in res.out
    names = [line.split()[0] for line in res.out.splitlines() if line and not line.startswith(" ")][1:]
    assert names == [
        "trixie-armhf-lite",
        "trixie-armhf",
        "trixie-arm64-lite",
        "trixie-arm64-full",
        "trixie-arm64",
        "bookworm-armhf-lite",
        "bookworm-arm64-lite",
    ]
    assert "trixie-armhf-lite (default)  alias latest-armhf-lite" in res.out
    assert "init_format cloudinit-rpi" in res.out and "devices pi5-32bit, pi4-32bit" in res.out


def _age_cached_list(url: str, days: float) -> None:
    from datetime import UTC, datetime, timedelta

    from pibake.image import catalogue

    meta_file = catalogue.cache_dir(url) / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["fetched_at"] = (datetime.now(UTC) - timedelta(days=days)).isoformat()
    meta_file.write_text(json.dumps(meta))


def test_offline_the_cached_list_is_used_with_its_age(
    site: Site, release: raspios.Release, isolated_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = _serve_os_list(site, release)
    assert run_cli(["image", "fetch", "--catalogue-url", url, "--list"]).code == 0
    _age_cached_list(url, 3)
    del site.routes[OS_LIST]  # the server no longer has it: as good as offline
    with caplog.at_level("WARNING"):
        res = run_cli(["image", "fetch", "--catalogue-url", url, "--list"])
    assert res.code == 0, res.err
    assert "trixie-armhf-lite (default)" in res.out and "cached copy" in res.out
    assert "using the cached copy" in caplog.text and "3 days old" in caplog.text and "HTTP 404" in caplog.text

    # Asked to refresh, it says so instead of quietly using the old copy.
    res = run_cli(["image", "fetch", "--catalogue-url", url, "--list", "--refresh-catalogue"])
    assert res.code == Refused.exit_code
    assert "3 days old" in res.err and "drop --refresh-catalogue" in res.err


def test_no_list_and_no_cached_copy_is_a_clear_error(site: Site, isolated_cache: Path) -> None:
    res = run_cli(["image", "fetch", "--catalogue-url", site.url + "/nothing-here.json"])
    assert res.code == PibakeError.exit_code
    assert "HTTP 404" in res.err and "no cached copy" in res.err and "--sha256" in res.err


@pytest.mark.parametrize("body", [HTML, b'{"imager": {}}'])
def test_something_that_is_not_an_os_list_is_refused_and_not_cached(
    site: Site, isolated_cache: Path, body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.routes["/bad.json"] = Route(body, content_type="application/json")
    monkeypatch.setenv("PIBAKE_OS_LIST_URL", site.url + "/bad.json")  # the environment variable, this time
    res = run_cli(["image", "fetch", "--list"])
    assert res.code == VerificationFailed.exit_code
    assert ("not JSON" in res.err) or ("no os_list" in res.err)
    assert not (isolated_cache / "catalogue").exists() or not any((isolated_cache / "catalogue").rglob("*.json"))
