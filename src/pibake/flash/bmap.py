"""Block maps (.bmap): which blocks of an image hold data, in bmaptool's XML format 2.0.

A finished image is mostly empty space: a 2 GiB card image may hold 600 MiB of
files. Its bmap lists the block ranges that matter, each with a sha256, so that
flashing writes (and verifies) only those. The format is bmaptool's own, so
`bmaptool copy` takes the bmaps written here and `pibake flash` takes bmaptool's.

Data ranges are found with SEEK_DATA/SEEK_HOLE: holes are left out, written bytes (zeros
included) are mapped. A card keeps its old bytes wherever a bmap maps nothing, so an image's
holes must be space nothing uses: pibake makes them so (``pibake.disk.sparse``) before it maps
an image, and never leaves out written zeros here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from pibake.disk.sparse import data_ranges
from pibake.errors import PibakeError, UsageError

log = logging.getLogger(__name__)

FORMAT_VERSION = "2.0"
DEFAULT_BLOCK_SIZE = 4096
CHECKSUM_TYPE = "sha256"
READ_CHUNK = 4 << 20
# A bmap of a 64 GiB image with a million ranges is about 100 MiB: anything far
# bigger is not a bmap, and is not worth reading into memory to find out.
MAX_BMAP_BYTES = 256 << 20

_FIX_IT = (
    "recreate it with `bmaptool create` (or let `pibake image finalize` write it), or flash without it (--no-bmap)"
)


@dataclass(frozen=True)
class BlockRange:
    """Blocks FIRST..LAST (inclusive) of the image, and the checksum of their bytes."""

    first: int
    last: int
    checksum: str | None = None

    @property
    def blocks(self) -> int:
        """How many blocks the range covers."""
        return self.last - self.first + 1


@dataclass(frozen=True)
class Extent:
    """A byte range of the image (the last block of an image may be short)."""

    offset: int
    length: int
    checksum: str | None

    @property
    def end(self) -> int:
        """The first byte past the range."""
        return self.offset + self.length


@dataclass(frozen=True)
class Bmap:
    """A block map: the image's size, its block size, and the ranges of blocks that hold data."""

    image_size: int
    block_size: int
    ranges: tuple[BlockRange, ...]
    checksum_type: str = CHECKSUM_TYPE
    version: str = FORMAT_VERSION

    @property
    def blocks_count(self) -> int:
        """Blocks in the image, the last one maybe short."""
        return -(-self.image_size // self.block_size)

    @property
    def mapped_blocks(self) -> int:
        """Blocks that hold data."""
        return sum(r.blocks for r in self.ranges)

    @property
    def mapped_bytes(self) -> int:
        """Bytes that hold data: what a write with this bmap writes."""
        return sum(e.length for e in self.extents())

    def extents(self) -> Iterator[Extent]:
        """The mapped ranges as byte ranges, clipped to the image size."""
        for r in self.ranges:
            offset = r.first * self.block_size
            end = min((r.last + 1) * self.block_size, self.image_size)
            yield Extent(offset, end - offset, r.checksum)

    def check_image(self, image: Path) -> None:
        """Refuse an image this bmap was not made for (bmaptool checks the size too)."""
        size = image.stat().st_size
        if size != self.image_size:
            raise UsageError(
                f"the bmap is for an image of {self.image_size} bytes but {image} has {size}: "
                f"it belongs to another image; {_FIX_IT}"
            )

    def to_xml(self) -> str:
        """The bmap file, with its own checksum filled in, byte for byte as bmaptool lays it out."""
        cs_len = len(hashlib.new(self.checksum_type).hexdigest())
        mapped = self.mapped_blocks
        percent = 100.0 * mapped / self.blocks_count if self.blocks_count else 0.0
        lines = [
            '<?xml version="1.0" ?>',
            "<!-- The block map of an image: the blocks that hold data. Only these need to be",
            "     written to a card; the others are unused. Written by pibake in bmaptool's",
            "     format, so `bmaptool copy` and `pibake flash` both read it. -->",
            "",
            f'<bmap version="{self.version}">',
            f"    <!-- Image size in bytes: {_human(self.image_size)} -->",
            f"    <ImageSize> {self.image_size} </ImageSize>",
            "",
            "    <!-- Size of a block in bytes -->",
            f"    <BlockSize> {self.block_size} </BlockSize>",
            "",
            "    <!-- Count of blocks in the image file -->",
            f"    <BlocksCount> {self.blocks_count} </BlocksCount>",
            "",
            f"    <!-- Count of mapped blocks: {_human(mapped * self.block_size)} or {percent:.1f}% -->",
            f"    <MappedBlocksCount> {mapped} </MappedBlocksCount>",
            "",
            "    <!-- Type of checksum used in this file -->",
            f"    <ChecksumType> {self.checksum_type} </ChecksumType>",
            "",
            "    <!-- The checksum of this bmap file. When it is calculated, the value of",
            '         the checksum has be zero (all ASCII "0" symbols).  -->',
            f"    <BmapFileChecksum> {'0' * cs_len} </BmapFileChecksum>",
            "",
            "    <!-- The block map: ranges of blocks, each with the checksum of its bytes. -->",
            "    <BlockMap>",
        ]
        for r in self.ranges:
            attr = f' chksum="{r.checksum}"' if r.checksum else ""
            span = f"{r.first}-{r.last}" if r.last != r.first else f"{r.first}"
            lines.append(f"        <Range{attr}> {span} </Range>")
        lines += ["    </BlockMap>", "</bmap>", ""]
        text = "\n".join(lines)
        digest = hashlib.new(self.checksum_type, text.encode()).hexdigest()
        return text.replace(f"<BmapFileChecksum> {'0' * cs_len} <", f"<BmapFileChecksum> {digest} <", 1)

    def write(self, path: Path) -> None:
        """Write the bmap file atomically: a reader never sees half of one."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_xml())
        tmp.replace(path)


def _human(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    for exponent, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if n >= 1024**exponent or unit == "KiB":
            return f"{n / 1024**exponent:.1f} {unit}"
    raise AssertionError("unreachable")


def default_path(image: Path) -> Path:
    """Where a bmap of IMAGE lives: IMAGE.bmap next to it (pibake-demo.img.bmap)."""
    return image.with_name(image.name + ".bmap")


def find_for(image: Path) -> Path | None:
    """The bmap next to IMAGE, as bmaptool looks for it: IMAGE.bmap, then IMAGE with .bmap for its suffix."""
    for candidate in (default_path(image), image.with_suffix(".bmap")):
        if candidate != image and candidate.is_file():
            return candidate
    return None


# --- creating ---------------------------------------------------------------------------------


def _block_extents(fd: int, size: int, block_size: int) -> list[tuple[int, int]]:
    """Data ranges widened to whole blocks and merged: (first_block, last_block) inclusive."""
    merged: list[tuple[int, int]] = []
    for start, end in data_ranges(fd, 0, size):
        first, last = start // block_size, (end - 1) // block_size
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
        else:
            merged.append((first, last))
    return merged


class _RangeBuilder:
    """Collects block ranges in order, hashing their bytes as they are fed."""

    def __init__(self, checksum_type: str) -> None:
        self.checksum_type = checksum_type
        self.ranges: list[BlockRange] = []
        self._first = -1
        self._last = -1
        self._hash: hashlib._Hash | None = None

    def feed(self, block: int, data: memoryview, nblocks: int) -> None:
        """NBLOCKS blocks starting at BLOCK, whose bytes are DATA."""
        if self._hash is not None and block != self._last + 1:
            self.close()
        if self._hash is None:
            self._first, self._hash = block, hashlib.new(self.checksum_type)
        self._hash.update(data)
        self._last = block + nblocks - 1

    def close(self) -> None:
        if self._hash is not None:
            self.ranges.append(BlockRange(self._first, self._last, self._hash.hexdigest()))
            self._hash = None


def create(
    image: Path,
    out: Path | None = None,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> Bmap:
    """Map the data blocks of IMAGE, with a sha256 for each range; write the bmap to OUT if given.

    The usual OUT is ``default_path(image)`` (IMAGE.bmap), where ``pibake flash``
    and ``bmaptool copy`` find it by themselves.
    """
    if block_size <= 0 or block_size % 512:
        raise UsageError(f"block size {block_size} is not a positive multiple of 512")
    try:
        fd = os.open(image, os.O_RDONLY)
    except OSError as e:
        raise PibakeError(f"cannot read {image}: {e.strerror}") from e
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise UsageError(f"{image} is empty: there is nothing to map")
        builder = _RangeBuilder(CHECKSUM_TYPE)
        buf = bytearray(READ_CHUNK)
        for first, last in _block_extents(fd, size, block_size):
            offset, end = first * block_size, min((last + 1) * block_size, size)
            while offset < end:
                n = os.preadv(fd, [memoryview(buf)[: min(READ_CHUNK, end - offset)]], offset)
                if n <= 0:
                    raise PibakeError(f"{image} ended at {offset} bytes while mapping it: was it changed meanwhile?")
                builder.feed(offset // block_size, memoryview(buf)[:n], -(-n // block_size))
                offset += n
        builder.close()
    finally:
        os.close(fd)
    bmap = Bmap(size, block_size, tuple(builder.ranges))
    log.info(
        "mapped %s: %s of %s in %d ranges",
        image,
        _human(bmap.mapped_bytes),
        _human(size),
        len(bmap.ranges),
    )
    if out is not None:
        bmap.write(out)
        log.info("wrote %s", out)
    return bmap


# --- reading ----------------------------------------------------------------------------------

_FILE_CHECKSUM = re.compile(rb"(<BmapFileChecksum>\s*)([0-9A-Fa-f]+)(\s*</BmapFileChecksum>)")


def load(path: Path) -> Bmap:
    """Read and validate a bmap file; any fault is a PibakeError naming the file (UsageError: not a usable bmap)."""
    try:
        size = path.stat().st_size
        if size > MAX_BMAP_BYTES:
            raise UsageError(f"{path} is {size} bytes: too big to be a bmap; {_FIX_IT}")
        data = path.read_bytes()
    except OSError as e:
        raise PibakeError(f"cannot read the bmap {path}: {e.strerror}") from e
    return parse(data, source=str(path))


def parse(data: bytes, *, source: str = "bmap") -> Bmap:
    """Parse bmap XML (format 2.0, or 1.4 which is the same) and check it is consistent with itself."""

    def bad(why: str) -> UsageError:
        return UsageError(f"{source} is not a usable bmap: {why}; {_FIX_IT}")

    # bmaps never have a DTD; refusing one rules out entity-expansion bombs before the parser sees them.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise bad("it declares a DOCTYPE or entities")
    try:
        root = ElementTree.fromstring(data)  # noqa: S314 (no DTD, checked above)
    except ElementTree.ParseError as e:
        raise bad(f"malformed XML ({e})") from e
    if root.tag != "bmap":
        raise bad(f"the root element is <{root.tag}>, not <bmap>")

    version = root.get("version", "")
    match = re.fullmatch(r"(\d+)\.(\d+)", version)
    if not match:
        raise bad(f"its version attribute {version!r} is not MAJOR.MINOR")
    major, minor = int(match[1]), int(match[2])
    if not (major == 2 or (major, minor) == (1, 4)):
        raise bad(f"format version {version} is not supported (pibake reads 2.x, which bmaptool 3 and later write)")

    def number(tag: str, *, minimum: int = 0) -> int:
        element = root.find(tag)
        if element is None or element.text is None:
            raise bad(f"<{tag}> is missing")
        try:
            value = int(element.text.strip())
        except ValueError:
            raise bad(f"<{tag}> is {element.text.strip()!r}, not a number") from None
        if value < minimum:
            raise bad(f"<{tag}> is {value}, less than {minimum}")
        return value

    image_size = number("ImageSize", minimum=1)
    block_size = number("BlockSize", minimum=1)
    blocks_count = number("BlocksCount")
    mapped_count = number("MappedBlocksCount")
    expected_blocks = -(-image_size // block_size)
    if blocks_count != expected_blocks:
        raise bad(
            f"<BlocksCount> {blocks_count} does not fit <ImageSize> {image_size} in blocks of {block_size} "
            f"(that is {expected_blocks} blocks)"
        )

    cs_element = root.find("ChecksumType")
    checksum_type = (cs_element.text or "").strip().lower() if cs_element is not None else ""
    if not checksum_type:
        raise bad("<ChecksumType> is missing")
    try:
        cs_len = len(hashlib.new(checksum_type).hexdigest())
    except ValueError:
        raise bad(f"checksum type {checksum_type!r} is unknown") from None

    _check_file_checksum(data, checksum_type, bad)

    block_map = root.find("BlockMap")
    if block_map is None:
        raise bad("<BlockMap> is missing")
    ranges: list[BlockRange] = []
    for element in block_map.findall("Range"):
        text = (element.text or "").strip()
        bounds = re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", text)
        if not bounds:
            raise bad(f"range {text!r} is not FIRST-LAST or BLOCK")
        first = int(bounds[1])
        last = int(bounds[2]) if bounds[2] is not None else first
        if first > last:
            raise bad(f"range {text!r} ends before it starts")
        if last >= blocks_count:
            raise bad(f"range {text!r} reaches past the image's last block {blocks_count - 1}")
        if ranges and first <= ranges[-1].last:
            raise bad(f"range {text!r} overlaps or precedes the range before it")
        checksum = element.get("chksum")
        if checksum is not None:
            checksum = checksum.strip().lower()
            if not re.fullmatch(rf"[0-9a-f]{{{cs_len}}}", checksum):
                raise bad(f"range {text!r} has checksum {checksum!r}, not a {checksum_type} digest")
        ranges.append(BlockRange(first, last, checksum))
    mapped = sum(r.blocks for r in ranges)
    if mapped != mapped_count:
        raise bad(f"its ranges cover {mapped} blocks but <MappedBlocksCount> says {mapped_count}")
    return Bmap(image_size, block_size, tuple(ranges), checksum_type, version)


def _check_file_checksum(data: bytes, checksum_type: str, bad: Callable[[str], PibakeError]) -> None:
    """bmaptool's rule: the file's sha256 with the stated digest replaced by zeros is the stated digest."""
    match = _FILE_CHECKSUM.search(data)
    if not match:
        raise bad("<BmapFileChecksum> is missing")
    stated = match[2].decode().lower()
    zeroed = data[: match.start(2)] + b"0" * len(match[2]) + data[match.end(2) :]
    actual = hashlib.new(checksum_type, zeroed).hexdigest()
    if actual != stated:
        raise bad(
            f"its own checksum does not match (the file says {stated[:16]}..., its content gives {actual[:16]}...): "
            "it was edited or damaged"
        )
