"""Reading Raspberry Pi's OS list: release names from file names, the nested entries, aliases, the cache's age."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pibake.errors import PibakeError, Refused, UsageError, VerificationFailed
from pibake.image import catalogue
from tests.integration import oslist


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("2026-06-18-raspios-trixie-arm64-lite.img.xz", ("trixie-arm64-lite", "trixie", "arm64", "lite", "2026-06-18")),
        (
            "2026-06-18-raspios-bookworm-armhf-lite.img.xz",
            ("bookworm-armhf-lite", "bookworm", "armhf", "lite", "2026-06-18"),
        ),
        ("2026-06-18-raspios-trixie-arm64.img.xz", ("trixie-arm64", "trixie", "arm64", "", "2026-06-18")),
        ("2026-06-18-raspios-trixie-armhf-full.img.xz", ("trixie-armhf-full", "trixie", "armhf", "full", "2026-06-18")),
        # The older order, and the oldest names with no architecture (armhf only then).
        ("2020-05-27-raspios-buster-lite-armhf.zip", ("buster-armhf-lite", "buster", "armhf", "lite", "2020-05-27")),
        ("2020-05-27-raspios-buster.zip", ("buster-armhf", "buster", "armhf", "", "2020-05-27")),
        ("ubuntu-24.04.5-preinstalled-server-arm64+raspi.img.xz", None),
        ("2026-06-18-raspios-trixie-arm64-lite-arm64.img.xz", None),
        ("2026-06-18-raspios-trixie-riscv64.img.xz", None),
    ],
)  # fmt: skip
def test_names_come_from_the_file_name(filename: str, expected: tuple[str, ...] | None) -> None:
    assert catalogue.name_from_filename(filename) == expected


def _served() -> list[dict[str, object]]:
    return [
        oslist.served_entry(
            "Raspberry Pi OS Lite (32-bit)",
            "https://example.invalid/2026-06-18-raspios-trixie-armhf-lite.img.xz",
            image_sha256="AB" * 32,  # upper case in the list: taken as the same digest
            image_size=2_675_965_952,
            download_size=549_086_704,
        )
    ]


def test_the_nested_list_gives_the_raspios_releases_only() -> None:
    releases = catalogue.parse_os_list(oslist.document(_served()))
    assert sorted(releases) == [
        "bookworm-arm64-lite",
        "trixie-arm64",
        "trixie-arm64-full",
        "trixie-arm64-lite",
        "trixie-armhf",
        "trixie-armhf-lite",
    ]
    lite = releases["trixie-armhf-lite"]
    assert lite.image_sha256 == "ab" * 32 and lite.image_size == 2_675_965_952 and lite.size == 549_086_704
    assert lite.sha256 is None  # Raspberry Pi lists no image_download_sha256 for its own images
    assert lite.init_format == "cloudinit-rpi" and "pi1-32bit" in lite.devices
    assert releases["bookworm-arm64-lite"].init_format == "systemd"
    assert lite.stem == "2026-06-18-raspios-trixie-armhf-lite"


def test_malformed_fields_are_dropped_not_trusted() -> None:
    entry = oslist.served_entry(
        "x", "https://example.invalid/2026-06-18-raspios-trixie-armhf-lite.img.xz",
        image_sha256="not-a-digest", image_size=-1, download_size=None,
    )  # fmt: skip
    entry["devices"] = "pi4-32bit"
    rel = catalogue.parse_os_list({"os_list": [entry]})["trixie-armhf-lite"]
    assert rel.image_sha256 is None and rel.image_size is None and rel.devices == () and not rel.verifiable


def test_not_an_os_list_is_a_verification_failure() -> None:
    bad: tuple[object, ...] = ({"imager": {}}, [], {"os_list": {}})
    for data in bad:
        with pytest.raises(VerificationFailed, match="no os_list"):
            catalogue.parse_os_list(data)


def test_latest_is_the_newest_suite_not_the_newest_date() -> None:
    files = (
        "2026-06-18-raspios-trixie-arm64-lite.img.xz",
        "2026-07-01-raspios-bookworm-arm64-lite.img.xz",
        "2026-06-18-raspios-trixie-arm64.img.xz",
    )
    doc = {"os_list": [oslist.raspios_entry(f, "", "k", f, devices=[], init_format="x") for f in files]}
    cat = catalogue.Catalogue(catalogue.parse_os_list(doc), "file:///l.json", datetime.now(UTC))
    assert cat.lookup("latest-arm64-lite").name == "trixie-arm64-lite"
    assert cat.lookup("latest-arm64").name == "trixie-arm64"
    assert cat.lookup("2026-07-01-raspios-bookworm-arm64-lite").name == "bookworm-arm64-lite"
    with pytest.raises(UsageError, match="unknown release 'latest-armhf-lite'"):
        cat.lookup("latest-armhf-lite")


def test_the_url_comes_from_the_option_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(catalogue.URL_ENV, raising=False)
    assert catalogue.catalogue_url() == catalogue.DEFAULT_URL
    monkeypatch.setenv(catalogue.URL_ENV, "https://mirror.example.invalid/os_list.json")
    assert catalogue.catalogue_url() == "https://mirror.example.invalid/os_list.json"
    assert catalogue.catalogue_url("file:///srv/os_list.json") == "file:///srv/os_list.json"
    with pytest.raises(UsageError, match="http"):
        catalogue.catalogue_url("ftp://x/os_list.json")


def test_a_file_list_is_cached_with_its_date_and_used_for_a_day(isolated_cache: Path, tmp_path: Path) -> None:
    listing = tmp_path / "os_list.json"
    listing.write_bytes(oslist.render(_served()))
    url = listing.as_uri()
    t0 = datetime(2026, 11, 1, 12, tzinfo=UTC)
    cat = catalogue.load(url, now=t0)
    assert not cat.from_cache and cat.fetched_at == t0 and "trixie-armhf-lite" in cat.releases
    meta = json.loads((catalogue.cache_dir(url) / "meta.json").read_text())
    assert meta == {"url": url, "fetched_at": t0.isoformat()}

    listing.write_text("{}")  # changed at the source: not read again within a day
    assert catalogue.load(url, now=t0 + timedelta(hours=20)).from_cache
    # Older than a day: read again, found broken, the cached copy serves with a warning.
    stale = catalogue.load(url, now=t0 + timedelta(days=3))
    assert stale.from_cache and "trixie-armhf-lite" in stale.releases
    with pytest.raises(Refused, match="3 days old"):
        catalogue.load(url, now=t0 + timedelta(days=3), refresh=True)


def test_a_missing_list_without_a_cached_copy_says_what_to_do(isolated_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(PibakeError, match=r"no cached copy.*--catalogue-url.*PIBAKE_OS_LIST_URL"):
        catalogue.load((tmp_path / "absent.json").as_uri())
