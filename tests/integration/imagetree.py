"""Every file of both partitions of an image, with its metadata and a digest of its content.

Read without mounting: the ext4 tree with debugfs (``ls -p`` for mode and owner,
``rdump`` for the bytes), the FAT tree with mtools. Two snapshots compare file by file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from pibake.disk.ext4 import ExtFs
from pibake.disk.fat import FatFs

Snapshot = dict[str, tuple[object, ...]]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(image: Path, work: Path) -> Snapshot:
    """'root:/etc/hostname' -> (mode, uid, gid, sha256); 'boot:/cmdline.txt' -> (sha256,); dirs and links too."""
    files: Snapshot = {}
    root = ExtFs.partition(image, 2)
    dump = root.rdump("/", work / "root")
    level = ["/"]
    while level:
        following = []
        for directory, entries in root.list_dirs(level).items():
            for e in entries or []:
                if e.name in (".", ".."):
                    continue
                path = directory.rstrip("/") + "/" + e.name
                local = dump / path.lstrip("/")
                if e.is_dir:
                    following.append(path)
                    content = "directory"
                elif e.is_symlink:
                    content = f"-> {local.readlink()}"
                elif e.is_file:
                    content = _sha256(local)
                else:
                    content = "special"
                files[f"root:{path}"] = (e.mode, e.uid, e.gid, content)
        level = following
    return {**files, **boot_snapshot(image, work)}


def boot_snapshot(image: Path, work: Path) -> Snapshot:
    """The boot partition's part of `snapshot`: 'boot:/cmdline.txt' -> (sha256,), 'boot:/overlays/' -> ("directory",),
    its copy under WORK/boot."""
    boot = FatFs.partition(image, 1)
    copied = boot.copy_all(work / "boot")
    return {
        f"boot:{name}": ("directory",) if name.endswith("/") else (_sha256(copied / name.lstrip("/")),)
        for name in boot.list()
    }


@dataclass(frozen=True)
class Difference:
    added: frozenset[str]
    removed: frozenset[str]
    changed: frozenset[str]

    @property
    def paths(self) -> frozenset[str]:
        return self.added | self.removed | self.changed


def compare(before: Snapshot, after: Snapshot) -> Difference:
    return Difference(
        added=frozenset(after.keys() - before.keys()),
        removed=frozenset(before.keys() - after.keys()),
        changed=frozenset(p for p in before.keys() & after.keys() if before[p] != after[p]),
    )
