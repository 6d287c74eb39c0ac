"""The Raspberry Pi OS releases, read the way Raspberry Pi Imager reads them: its published OS list JSON, cached.

Imager learns what to offer from one file, ``os_list_imagingutility_v4.json``: a tree of entries
(categories hold ``subitems``), each image entry with its ``url``, ``extract_size`` and
``extract_sha256`` (the unpacked image), usually ``image_download_size`` and sometimes
``image_download_sha256`` (the archive), ``release_date``, ``devices`` (Imager's board tags, such as
``pi4-64bit``) and ``init_format`` (how the image takes its first-boot settings). pibake reads the
same file instead of keeping hand-copied digests, so a new release needs no pibake change.

Names come from the archive's file name: ``2026-06-18-raspios-trixie-arm64-lite.img.xz`` is
``trixie-arm64-lite`` (and, by its file stem, ``2026-06-18-raspios-trixie-arm64-lite``);
``latest-arm64-lite`` is the one of the newest Debian suite. Only Raspberry Pi OS entries are
taken (``-raspios-`` in the name): they are what ``pibake image prepare`` knows.

The list is cached under ``cache/catalogue/<hash of its URL>/`` with the time it was fetched, used
as it is for a day, then fetched again; when that fails (offline) the cached copy is used with a
warning that gives its age.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from pibake import __version__
from pibake.errors import PibakeError, Refused, UsageError, VerificationFailed
from pibake.util.cache import cache_root

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

# Raspberry Pi's own list, the one Imager starts from (its --repo overrides it, as these do).
DEFAULT_URL = "https://downloads.raspberrypi.com/os_list_imagingutility_v4.json"
URL_ENV = "PIBAKE_OS_LIST_URL"
# A cached list younger than this is used without asking the server again.
MAX_AGE = timedelta(days=1)
# The current Lite release for the architecture every board in pibake's table runs today (32-bit:
# the table and the emulation profiles are armhf); see DEFAULT_RELEASE's use in fetch.
DEFAULT_RELEASE = "latest-armhf-lite"
# Debian's suites, oldest first: "latest" means the newest suite, not the newest date (Raspberry Pi
# publishes the Legacy and the current release on the same day). A suite missing here is taken as
# newer than all of them.
DEBIAN_SUITES = ("jessie", "stretch", "buster", "bullseye", "bookworm", "trixie", "forky", "duke")
ARCHITECTURES = ("armhf", "arm64")
VARIANTS = ("lite", "full")

_FILENAME = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})-raspios-(?P<rest>[a-z0-9-]+?)\.(?:img\.xz|img\.gz|zip|img)$", re.IGNORECASE
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Release:
    """One Raspberry Pi OS image of the OS list, as pibake names and checks it."""

    name: str  # trixie-arm64-lite
    suite: str
    arch: str
    variant: str  # "lite", "full", or "" for the desktop image
    url: str
    # The archive's sha256 and size (image_download_*); either may be missing from the list.
    sha256: str | None
    size: int | None
    # The unpacked image's sha256 and size (extract_*): what Imager itself checks while writing.
    image_sha256: str | None
    image_size: int | None
    release_date: str
    description: str
    devices: tuple[str, ...] = ()
    init_format: str | None = None

    @property
    def filename(self) -> str:
        return unquote(urlsplit(self.url).path.rsplit("/", 1)[-1])

    @property
    def stem(self) -> str:
        """The archive's name without its extension: 2026-06-18-raspios-trixie-arm64-lite."""
        m = _FILENAME.match(self.filename)
        return f"{m.group('date')}-raspios-{m.group('rest')}" if m else self.filename

    @property
    def verifiable(self) -> bool:
        return self.sha256 is not None or self.image_sha256 is not None


@dataclass(frozen=True)
class Catalogue:
    """The releases of one OS list, where it came from and when it was fetched."""

    releases: Mapping[str, Release]
    url: str
    fetched_at: datetime
    from_cache: bool = False
    aliases: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.aliases:
            object.__setattr__(self, "aliases", derive_aliases(self.releases.values()))

    def age(self, now: datetime | None = None) -> timedelta:
        return (now or datetime.now(UTC)) - self.fetched_at

    def lookup(self, name: str) -> Release:
        """The release NAME (or an alias of it); UsageError listing what there is."""
        target = self.aliases.get(name, name)
        if target in self.releases:
            return self.releases[target]
        known = ", ".join(sorted([*self.releases, *(a for a in self.aliases if not _is_stem(a))]))
        raise UsageError(
            f"unknown release {name!r}; the OS list ({self.url}, fetched {self.fetched_at:%Y-%m-%d %H:%M} UTC) "
            f"has: {known or 'no Raspberry Pi OS images'}. `pibake image fetch --list` shows them all; "
            "--url with --sha256 takes any other image"
        )

    def describe(self, default: str | None = DEFAULT_RELEASE) -> str:
        """The catalogue as `pibake image fetch --list` prints it."""
        lines = [f"Raspberry Pi OS releases from {self.url}", f"  fetched {_when(self)}"]
        default_target = self.aliases.get(default or "", default)
        for name, rel in sorted(self.releases.items(), key=lambda kv: _sort_key(kv[1]), reverse=True):
            aliases = sorted(a for a, t in self.aliases.items() if t == name and not _is_stem(a))
            mark = " (default)" if name == default_target else ""
            lines.append(f"{name}{mark}{'  alias ' + ', '.join(aliases) if aliases else ''}")
            lines.append(f"  {rel.description}, released {rel.release_date}, init_format {rel.init_format or 'none'}")
            lines.append(f"  devices {', '.join(rel.devices) or '(not listed)'}")
            lines.append(f"  {rel.url}")
            lines.append(
                f"  archive sha256 {rel.sha256 or '(not published in the list)'}, "
                f"image sha256 {rel.image_sha256 or '(not published)'} ({rel.image_size or '?'} bytes)"
            )
        return "\n".join(lines)


def _is_stem(alias: str) -> bool:
    return bool(re.match(r"^\d{4}-\d{2}-\d{2}-raspios-", alias))


def _when(cat: Catalogue) -> str:
    age = cat.age()
    return f"{cat.fetched_at:%Y-%m-%d %H:%M} UTC ({_age_text(age)} ago{', cached copy' if cat.from_cache else ''})"


def _age_text(age: timedelta) -> str:
    hours = age.total_seconds() / 3600
    if hours < 1:
        return f"{max(age.total_seconds() / 60, 0):.0f} minutes"
    if hours < 48:
        return f"{hours:.0f} hours"
    return f"{hours / 24:.0f} days"


# ---------------------------------------------------------------- reading the list


def name_from_filename(filename: str) -> tuple[str, str, str, str, str] | None:
    """(name, suite, arch, variant, date) from a Raspberry Pi OS archive's name; None for anything else.

    Both orders Raspberry Pi has used are read: ...-bookworm-arm64-lite.img.xz and the older
    ...-buster-lite-armhf.zip.
    """
    m = _FILENAME.match(filename)
    if not m:
        return None
    tokens = m.group("rest").lower().split("-")
    suite, rest = tokens[0], tokens[1:]
    arch = [t for t in rest if t in ARCHITECTURES]
    variant = [t for t in rest if t in VARIANTS]
    if len(arch) > 1 or len(variant) > 1 or len(arch) + len(variant) != len(rest) or not suite.isalpha():
        return None
    # The oldest releases name no architecture: they were armhf only.
    arch_name = arch[0] if arch else "armhf"
    name = "-".join([suite, arch_name, *variant])
    return name, suite, arch_name, variant[0] if variant else "", m.group("date")


def _entries(items: Any) -> Iterator[Mapping[str, Any]]:
    """Every image entry of the OS list's tree, depth first, in the list's order."""
    if not isinstance(items, list):
        return
    for item in items:
        if not isinstance(item, Mapping):
            continue
        if "subitems" in item:
            yield from _entries(item["subitems"])
        elif "url" in item:
            yield item
        # "subitems_url" (a list kept elsewhere, such as the bootloader images) is not followed:
        # Raspberry Pi OS is in this file.


def _digest(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    digest = value.strip().lower()
    return digest if _SHA256.match(digest) else None


def _size(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def parse_os_list(data: Any, *, source: str = "the OS list") -> dict[str, Release]:
    """The Raspberry Pi OS releases of an OS list document, by pibake's name.

    An entry whose digest fields are malformed keeps only what is well formed: a release with no
    digest at all is listed but needs --sha256 to fetch. Two entries with one name (the same image
    listed twice) keep the newer.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("os_list"), list):
        raise VerificationFailed(f"{source} is not an Imager OS list: it has no os_list array")
    releases: dict[str, Release] = {}
    for entry in _entries(data["os_list"]):
        url = entry.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            continue
        parsed = name_from_filename(unquote(urlsplit(url).path.rsplit("/", 1)[-1]))
        if parsed is None:
            continue
        name, suite, arch, variant, date = parsed
        devices = entry.get("devices")
        init_format = entry.get("init_format")
        rel = Release(
            name=name,
            suite=suite,
            arch=arch,
            variant=variant,
            url=url,
            sha256=_digest(entry.get("image_download_sha256")),
            size=_size(entry.get("image_download_size")),
            image_sha256=_digest(entry.get("extract_sha256")),
            image_size=_size(entry.get("extract_size")),
            release_date=str(entry.get("release_date") or date),
            description=str(entry.get("name") or name),
            devices=tuple(d for d in devices if isinstance(d, str)) if isinstance(devices, list) else (),
            init_format=init_format if isinstance(init_format, str) else None,
        )
        if name not in releases or releases[name].release_date < rel.release_date:
            releases[name] = rel
    return releases


def _suite_rank(suite: str) -> int:
    return DEBIAN_SUITES.index(suite) if suite in DEBIAN_SUITES else len(DEBIAN_SUITES)


def _sort_key(rel: Release) -> tuple[int, str, str]:
    return (_suite_rank(rel.suite), rel.release_date, rel.name)


def derive_aliases(releases: Iterable[Release]) -> dict[str, str]:
    """latest-ARCH[-VARIANT] for the newest suite of each kind, and each release's file stem."""
    aliases: dict[str, str] = {}
    newest: dict[str, Release] = {}
    for rel in releases:
        aliases[rel.stem] = rel.name
        kind = "-".join(["latest", rel.arch, *([rel.variant] if rel.variant else [])])
        if kind not in newest or _sort_key(newest[kind]) < _sort_key(rel):
            newest[kind] = rel
    aliases.update({kind: rel.name for kind, rel in newest.items()})
    return aliases


# ---------------------------------------------------------------- fetching and caching


def catalogue_url(url: str | None = None) -> str:
    """The OS list's URL: the option, else $PIBAKE_OS_LIST_URL, else Raspberry Pi's."""
    chosen = url or os.environ.get(URL_ENV) or DEFAULT_URL
    if not chosen.startswith(("http://", "https://", "file://")):
        raise UsageError(f"the OS list URL {chosen!r} is not an http(s):// or file:// URL")
    return chosen


def cache_dir(url: str) -> Path:
    return cache_root() / "catalogue" / hashlib.sha256(url.encode()).hexdigest()[:16]


def _read_cached(url: str) -> tuple[Any, datetime] | None:
    top = cache_dir(url)
    try:
        meta = json.loads((top / "meta.json").read_text())
        data = json.loads((top / "os_list.json").read_text())
        fetched_at = datetime.fromisoformat(meta["fetched_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data, fetched_at


def _store(url: str, body: bytes, fetched_at: datetime) -> None:
    """Keep the list and its date; both files appear whole or not at all (a rename each, meta last)."""
    top = cache_dir(url)
    top.mkdir(parents=True, exist_ok=True)
    for name, blob in (
        ("os_list.json", body),
        ("meta.json", (json.dumps({"url": url, "fetched_at": fetched_at.isoformat()}, indent=2) + "\n").encode()),
    ):
        part = top / (name + ".part")
        part.write_bytes(blob)
        part.rename(top / name)


def _download(url: str, *, session: requests.Session | None, timeout: float) -> bytes:
    if url.startswith("file://"):
        path = Path(unquote(urlsplit(url).path))
        try:
            return path.read_bytes()
        except OSError as e:
            raise PibakeError(f"cannot read the OS list {path}: {e.strerror}") from e
    import requests  # here: `pibake --help` should not pay for it

    http = session or requests.Session()
    try:
        resp = http.get(url, timeout=timeout, headers={"User-Agent": f"pibake/{__version__}"})
    except (requests.ConnectionError, requests.Timeout) as e:
        raise PibakeError(f"cannot fetch the OS list {url}: {type(e).__name__}") from e
    if resp.status_code >= 400:
        raise PibakeError(f"cannot fetch the OS list {url}: HTTP {resp.status_code} {resp.reason or ''}".rstrip())
    return resp.content


def _parse_body(body: bytes, url: str) -> tuple[Any, dict[str, Release]]:
    try:
        data = json.loads(body)
    except ValueError as e:
        raise VerificationFailed(f"the OS list {url} is not JSON ({e}); is the URL right?") from e
    return data, parse_os_list(data, source=f"the OS list {url}")


def load(
    url: str | None = None,
    *,
    refresh: bool = False,
    session: requests.Session | None = None,
    timeout: float = 30.0,
    now: datetime | None = None,
) -> Catalogue:
    """The OS list at URL: the cached copy if younger than MAX_AGE (unless REFRESH), else fetched and cached.

    If fetching fails, a cached copy of any age is used with a warning saying how old it is;
    with REFRESH, or without a cached copy, the failure is an error. A list that is not valid is
    never cached.
    """
    url = catalogue_url(url)
    now = now or datetime.now(UTC)
    cached = _read_cached(url)
    if cached is not None and not refresh and now - cached[1] < MAX_AGE:
        data, fetched_at = cached
        log.info("OS list: cached copy of %s from %s", url, f"{fetched_at:%Y-%m-%d %H:%M} UTC")
        return Catalogue(parse_os_list(data, source=f"the cached OS list of {url}"), url, fetched_at, True)
    try:
        body = _download(url, session=session, timeout=timeout)
        _, releases = _parse_body(body, url)
    except PibakeError as e:
        if cached is None:
            raise type(e)(
                f"{e}, and there is no cached copy. Check the network, point --catalogue-url or ${URL_ENV} at a "
                "reachable copy of the list (a file:// URL works), or give the image with --url and --sha256"
            ) from e
        age = now - cached[1]
        if refresh:
            raise Refused(
                f"{e}. A cached copy from {cached[1]:%Y-%m-%d %H:%M} UTC ({_age_text(age)} old) is there: "
                "drop --refresh-catalogue to use it"
            ) from e
        log.warning(
            "%s; using the cached copy fetched %s UTC, %s old: a newer release may have been published since",
            e,
            f"{cached[1]:%Y-%m-%d %H:%M}",
            _age_text(age),
        )
        data, fetched_at = cached
        return Catalogue(parse_os_list(data, source=f"the cached OS list of {url}"), url, fetched_at, True)
    _store(url, body, now)
    log.info("OS list: %d Raspberry Pi OS releases from %s", len(releases), url)
    return Catalogue(releases, url, now, False)
