"""Block maps: created from SEEK_DATA/SEEK_HOLE, bmaptool's format both ways, every fault a clear error."""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pibake.errors import PibakeError
from pibake.flash import bmap

MIB = 1 << 20
BS = bmap.DEFAULT_BLOCK_SIZE

needs_bmaptool = pytest.mark.skipif(shutil.which("bmaptool") is None, reason="bmaptool is not installed (bmap-tools)")


def _payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def sparse_image(path: Path, size: int, pieces: dict[int, bytes]) -> Path:
    """A sparse file of SIZE bytes holding PIECES at their offsets, holes everywhere else."""
    with path.open("wb") as f:
        f.truncate(size)
        for offset, data in pieces.items():
            f.seek(offset)
            f.write(data)
    return path


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return sparse_image(
        tmp_path / "card.img",
        64 * MIB,
        {
            0: _payload(512, 1),  # the MBR: block 0
            4 * MIB: _payload(3 * MIB, 2),  # blocks 1024-1791
            20 * MIB: bytes(MIB) + b"x" * 100,  # written zeros, then data in block 5376
            64 * MIB - 10: b"end" * 3 + b"!",  # the last block
        },
    )


def test_create_maps_the_data_blocks_with_their_checksums(image: Path) -> None:
    made = bmap.create(image)
    assert [(r.first, r.last) for r in made.ranges] == [(0, 0), (1024, 1791), (5120, 5376), (16383, 16383)]
    data = image.read_bytes()
    for r in made.ranges:
        assert r.checksum == hashlib.sha256(data[r.first * BS : (r.last + 1) * BS]).hexdigest()
    assert made.image_size == 64 * MIB and made.blocks_count == 16384
    assert made.mapped_blocks == 1 + 768 + 257 + 1


def test_round_trip_through_the_file(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "card.img.bmap"
    made = bmap.create(image, out)
    assert bmap.load(out) == made
    assert out.read_text().startswith('<?xml version="1.0" ?>')
    assert '<bmap version="2.0">' in out.read_text()


def test_a_short_last_block_is_mapped_and_clipped(tmp_path: Path) -> None:
    img = sparse_image(tmp_path / "odd.img", 3 * BS + 100, {3 * BS: b"tail" * 25})
    made = bmap.create(img)
    assert [(r.first, r.last) for r in made.ranges] == [(3, 3)]
    (extent,) = made.extents()
    assert (extent.offset, extent.length) == (3 * BS, 100)
    assert extent.checksum == hashlib.sha256(b"tail" * 25).hexdigest()
    assert bmap.parse(made.to_xml().encode()) == made


def test_default_path_and_auto_detection(image: Path, tmp_path: Path) -> None:
    assert bmap.default_path(image) == tmp_path / "card.img.bmap"
    assert bmap.find_for(image) is None
    bmap.create(image, bmap.default_path(image))
    assert bmap.find_for(image) == tmp_path / "card.img.bmap"


def test_check_image_refuses_another_image(image: Path, tmp_path: Path) -> None:
    made = bmap.create(image)
    other = sparse_image(tmp_path / "other.img", 32 * MIB, {})
    with pytest.raises(PibakeError, match="belongs to another image"):
        made.check_image(other)


def test_an_empty_image_cannot_be_mapped(tmp_path: Path) -> None:
    (tmp_path / "empty.img").touch()
    with pytest.raises(PibakeError, match="is empty"):
        bmap.create(tmp_path / "empty.img")


# --- malformed bmaps: each is a PibakeError that says what is wrong and what to do -----------------


def _reseal(xml: str) -> str:
    """Recompute the file checksum after an edit, so that only the edit itself is wrong."""
    zeroed = re.sub(r"<BmapFileChecksum> [0-9a-f]+ <", f"<BmapFileChecksum> {'0' * 64} <", xml)
    return zeroed.replace("0" * 64, hashlib.sha256(zeroed.encode()).hexdigest(), 1)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda x: x.replace('version="2.0"', 'version="1.3"'), "format version 1.3 is not supported"),
        (lambda x: x.replace('version="2.0"', 'version="3.0"'), "format version 3.0 is not supported"),
        (lambda x: x.replace('version="2.0"', 'version="two"'), "not MAJOR.MINOR"),
        (lambda x: x.replace("<BlocksCount> 16384 ", "<BlocksCount> 16000 "), "does not fit <ImageSize>"),
        (lambda x: x.replace("<BlockSize> 4096 ", "<BlockSize> 4k "), "<BlockSize> is '4k', not a number"),
        (lambda x: x.replace("<ImageSize> 67108864 ", "<ImageSize> 0 "), "<ImageSize> is 0"),
        (lambda x: x.replace("<MappedBlocksCount> 1027 ", "<MappedBlocksCount> 1000 "), "cover 1027 blocks"),
        (lambda x: x.replace("<ChecksumType> sha256 ", "<ChecksumType> sha999 "), "checksum type 'sha999'"),
        (lambda x: x.replace("> 16383 </Range>", "> 16384 </Range>"), "reaches past the image's last block"),
        (lambda x: x.replace("> 1024-1791 </Range>", "> 1791-1024 </Range>"), "ends before it starts"),
        (lambda x: x.replace("> 5120-5376 </Range>", "> 1700-1956 </Range>"), "overlaps"),
        (lambda x: x.replace("> 0 </Range>", "> zero </Range>"), "is not FIRST-LAST or BLOCK"),
        (lambda x: re.sub(r'chksum="[0-9a-f]{64}"', 'chksum="abc"', x, count=1), "not a sha256 digest"),
        (lambda x: x.replace("<BlockMap>", "<Blocks>").replace("</BlockMap>", "</Blocks>"), "<BlockMap> is missing"),
        (lambda x: x.replace("</bmap>", ""), "malformed XML"),
    ],
)
def test_malformed_bmaps_are_refused(image: Path, edit: object, message: str) -> None:
    xml = bmap.create(image).to_xml()
    assert callable(edit)
    with pytest.raises(PibakeError, match=re.escape(message)) as err:
        bmap.parse(_reseal(edit(xml)).encode(), source="card.img.bmap")
    assert "card.img.bmap is not a usable bmap" in str(err.value)
    assert "--no-bmap" in str(err.value)  # says what to do


def test_an_edited_bmap_fails_its_own_checksum(image: Path) -> None:
    xml = bmap.create(image).to_xml().replace("> 16383 </Range>", "> 16382 </Range>")
    with pytest.raises(PibakeError, match="its own checksum does not match"):
        bmap.parse(xml.encode())


def test_a_doctype_is_refused_before_parsing(image: Path) -> None:
    xml = bmap.create(image).to_xml()
    bomb = xml.replace('<?xml version="1.0" ?>', '<?xml version="1.0" ?><!DOCTYPE bmap [<!ENTITY a "aaaa">]>')
    with pytest.raises(PibakeError, match="DOCTYPE"):
        bmap.parse(bomb.encode())


def test_missing_bmap_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PibakeError, match="cannot read the bmap"):
        bmap.load(tmp_path / "nope.bmap")


# --- bmaptool: it takes our bmaps, we take its ----------------------------------------------------


@needs_bmaptool
def test_bmaptool_reads_ours(image: Path, tmp_path: Path) -> None:
    ours = tmp_path / "ours.bmap"
    bmap.create(image, ours)
    out = tmp_path / "copy.img"
    subprocess.run(["bmaptool", "copy", "--bmap", str(ours), str(image), str(out)], check=True, capture_output=True)
    assert out.read_bytes() == image.read_bytes()


@needs_bmaptool
def test_we_read_bmaptools(image: Path, tmp_path: Path) -> None:
    theirs = tmp_path / "theirs.bmap"
    subprocess.run(["bmaptool", "create", "-o", str(theirs), str(image)], check=True, capture_output=True)
    parsed = bmap.load(theirs)
    assert parsed.ranges == bmap.create(image).ranges
    assert (parsed.image_size, parsed.block_size, parsed.checksum_type) == (64 * MIB, BS, "sha256")
