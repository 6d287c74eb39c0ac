"""FAT boot partitions inside an image file, through mtools (``IMAGE@@BYTES``): no mount, no loop device."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pibake.disk.layout import read_mbr
from pibake.util.proc import run


class FatFs:
    """A FAT filesystem at a byte offset inside an image file, through mtools."""

    def __init__(self, image: Path, offset: int) -> None:
        self.image = image
        self.offset = offset

    @classmethod
    def partition(cls, image: Path, number: int = 1) -> FatFs:
        return cls(image, read_mbr(image).partition(number).start * 512)

    @property
    def device(self) -> str:
        return f"{self.image}@@{self.offset}"

    def list(self, *, recursive: bool = True) -> list[str]:
        """Paths below the root, '/'-rooted; directories end with '/'."""
        out = run(["mdir", *(["-/"] if recursive else []), "-b", "-i", self.device, "::/"])
        return sorted(line.removeprefix("::") for line in out.splitlines() if line.startswith("::/"))

    def exists(self, name: str) -> bool:
        return "/" + name.lstrip("/") in self.list()

    def read(self, name: str) -> bytes | None:
        if not self.exists(name):
            return None
        with tempfile.TemporaryDirectory(prefix="pibake-fat-") as tmp:
            dest = Path(tmp) / "file"
            run(["mcopy", "-n", "-i", self.device, f"::/{name.lstrip('/')}", str(dest)])
            return dest.read_bytes()

    def read_text(self, name: str) -> str | None:
        data = self.read(name)
        return None if data is None else data.decode("utf-8", errors="replace")

    def write(self, name: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="pibake-fat-") as tmp:
            src = Path(tmp) / "file"
            src.write_bytes(data)
            run(["mcopy", "-o", "-i", self.device, str(src), f"::/{name.lstrip('/')}"])

    def remove(self, name: str) -> None:
        if self.exists(name):
            run(["mdel", "-i", self.device, f"::/{name.lstrip('/')}"])

    def copy_all(self, dest: Path) -> Path:
        """Copy every file of the filesystem into DEST (created); return DEST."""
        dest.mkdir(parents=True, exist_ok=True)
        if self.list(recursive=False):
            run(["mcopy", "-s", "-n", "-m", "-i", self.device, "::/*", str(dest)])
        return dest


def read_boot_file(image: Path, name: str, dest: Path) -> Path:
    """Copy NAME from the image's FAT boot partition to DEST (mtools, no mount)."""
    mbr = read_mbr(image)
    boot = mbr.partition(1)
    run(["mcopy", "-n", "-o", "-i", f"{image}@@{boot.start * 512}", f"::/{name}", str(dest)])
    return dest
