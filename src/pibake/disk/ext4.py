"""ext4 root filesystems inside an image file, read and changed through debugfs (``IMAGE?offset=BYTES``): no mount.

e2fsprogs opens an image at a byte offset directly, so neither root nor a loop device is
needed (FAT boot partitions go through mtools: ``pibake.disk.fat``).

debugfs exits 0 even when a request fails, so every batch of changes is read back
and checked afterwards: a change that did not land is an error, never a silent skip.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pibake.disk.layout import read_mbr
from pibake.errors import CommandFailed, PibakeError
from pibake.util.proc import run

log = logging.getLogger(__name__)

S_IFMT = 0o170000
S_IFDIR = 0o040000
S_IFREG = 0o100000
S_IFLNK = 0o120000

# debugfs pages long listings when it thinks a person is reading.
_DEBUGFS_ENV = {"DEBUGFS_PAGER": "__none__", "PAGER": "__none__"}


@dataclass(frozen=True)
class DirEntry:
    """One line of ``debugfs ls -p``: /inode/mode/uid/gid/name/size/."""

    inode: int
    mode: int
    uid: int
    gid: int
    name: str
    size: int | None  # None for directories

    @property
    def is_dir(self) -> bool:
        return self.mode & S_IFMT == S_IFDIR

    @property
    def is_file(self) -> bool:
        return self.mode & S_IFMT == S_IFREG

    @property
    def is_symlink(self) -> bool:
        return self.mode & S_IFMT == S_IFLNK

    @property
    def perm(self) -> int:
        return self.mode & 0o7777


def parse_ls_p(line: str) -> DirEntry | None:
    """Parse one ``ls -p`` line; None for anything else (headers, blank lines)."""
    if not (line.startswith("/") and line.endswith("/")):
        return None
    fields = line[1:-1].split("/")
    # A name cannot contain "/", so exactly six fields; deleted entries have fewer.
    if len(fields) != 6 or not fields[0].isdigit():
        return None
    inode, mode, uid, gid, name, size = fields
    return DirEntry(int(inode), int(mode, 8), int(uid), int(gid), name, int(size) if size else None)


def _quote(path: str) -> str:
    """A path as one debugfs argument (its parser understands double quotes)."""
    if any(c in path for c in '"\n\r'):
        raise PibakeError(f"cannot handle the path {path!r} inside an image (quote or newline in it)")
    return f'"{path}"' if any(c.isspace() for c in path) else path


def _parent(path: str) -> str:
    return str(PurePosixPath(path).parent)


def _name(path: str) -> str:
    return PurePosixPath(path).name


@dataclass(frozen=True)
class WriteFile:
    path: str
    data: bytes
    mode: int | None = None  # permission bits; None: keep the existing file's, else 0o644
    uid: int | None = None  # None: keep the existing file's, else 0
    gid: int | None = None


@dataclass(frozen=True)
class MakeDir:
    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str


@dataclass(frozen=True)
class Remove:
    """Remove a file, a symlink or an empty directory; nothing if it is absent."""

    path: str


Change = WriteFile | MakeDir | Symlink | Remove


class ExtFs:
    """An ext2/3/4 filesystem at a byte offset inside an image file, through debugfs."""

    def __init__(self, image: Path, offset: int) -> None:
        self.image = image
        self.offset = offset

    @classmethod
    def partition(cls, image: Path, number: int = 2) -> ExtFs:
        return cls(image, read_mbr(image).partition(number).start * 512)

    @property
    def device(self) -> str:
        return f"{self.image}?offset={self.offset}"

    def debugfs(self, requests: Sequence[str], *, write: bool = False) -> str:
        """Run REQUESTS in one debugfs session; return its stdout (each request echoed as 'debugfs: ...')."""
        with tempfile.NamedTemporaryFile("w", prefix="pibake-debugfs-", suffix=".cmd", delete=False) as f:
            f.write("\n".join(requests) + "\n")
            cmdfile = Path(f.name)
        try:
            argv = ["debugfs", *(["-w"] if write else []), "-f", str(cmdfile), self.device]
            return run(argv, env=_DEBUGFS_ENV)
        finally:
            cmdfile.unlink()

    # ------------------------------------------------------------ reading

    def list_dirs(self, paths: Sequence[str]) -> dict[str, list[DirEntry] | None]:
        """``ls -p`` of each of PATHS in one session; None for a path that is not a directory."""
        if not paths:
            return {}
        out = self.debugfs([f"ls -p {_quote(p)}" for p in paths])
        result: dict[str, list[DirEntry] | None] = {}
        current: list[DirEntry] | None = None
        index = -1
        for line in out.splitlines():
            if line.startswith("debugfs: "):
                index += 1
                current = []
                result[paths[index]] = current
                continue
            entry = parse_ls_p(line)
            if entry is not None and current is not None:
                current.append(entry)
        # An existing directory always lists "." and "..": an empty listing means no directory.
        return {p: (v if v else None) for p, v in result.items()} | {p: None for p in paths if p not in result}

    def list_dir(self, path: str) -> list[DirEntry] | None:
        entries = self.list_dirs([path])[path]
        return None if entries is None else [e for e in entries if e.name not in (".", "..")]

    def walk(self, path: str) -> list[tuple[str, DirEntry]]:
        """Everything below the directory PATH, parents before children ([] when PATH is no directory).

        One debugfs session per level of the tree; symlinks are listed, not followed.
        """
        found: list[tuple[str, DirEntry]] = []
        level = [path]
        while level:
            following = []
            for directory, entries in self.list_dirs(level).items():
                for e in entries or []:
                    if e.name in (".", ".."):
                        continue
                    child = f"{directory.rstrip('/')}/{e.name}"
                    found.append((child, e))
                    if e.is_dir:
                        following.append(child)
            level = following
        return found

    def stat_many(self, paths: Iterable[str]) -> dict[str, DirEntry | None]:
        wanted = sorted(set(paths))
        listings = self.list_dirs(sorted({_parent(p) for p in wanted}))
        result: dict[str, DirEntry | None] = {}
        for p in wanted:
            entries = listings.get(_parent(p)) or []
            result[p] = next((e for e in entries if e.name == _name(p)), None)
        return result

    def stat(self, path: str) -> DirEntry | None:
        return self.stat_many([path])[path]

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None

    def read_many(self, paths: Sequence[str]) -> dict[str, bytes | None]:
        """The contents of regular files PATHS (None for a missing one), in one debugfs session."""
        if not paths:
            return {}
        with tempfile.TemporaryDirectory(prefix="pibake-dump-") as tmp:
            local = [Path(tmp) / str(i) for i in range(len(paths))]
            self.debugfs([f"dump {_quote(p)} {dest}" for p, dest in zip(paths, local, strict=True)])
            # debugfs creates the local file before it looks the path up: size alone
            # cannot tell an empty file from a missing one, so ask for the stat too.
            found = self.stat_many(paths)
            result: dict[str, bytes | None] = {}
            for p, dest in zip(paths, local, strict=True):
                entry = found[p]
                result[p] = dest.read_bytes() if entry is not None and entry.is_file and dest.exists() else None
            return result

    def read(self, path: str) -> bytes | None:
        return self.read_many([path])[path]

    def read_text(self, path: str) -> str | None:
        data = self.read(path)
        return None if data is None else data.decode("utf-8", errors="replace")

    def rdump(self, path: str, dest: Path) -> Path:
        """Copy the directory tree PATH into DEST (DEST/<basename of PATH>); return that directory."""
        dest.mkdir(parents=True, exist_ok=True)
        self.debugfs([f"rdump {_quote(path)} {dest}"])
        target = dest / (_name(path) or "")
        if path != "/" and not target.is_dir():
            raise PibakeError(f"{self.image}: {path} is not a directory in the root filesystem")
        return target

    # ------------------------------------------------------------ writing

    def apply(self, changes: Sequence[Change]) -> None:
        """Make CHANGES in one debugfs -w session, then read them back and check each one landed."""
        if not changes:
            return
        touched = {c.path for c in changes}
        before = self.stat_many(touched)
        requests: list[str] = []
        expected: dict[str, tuple[str, int | None, int | None, int | None, int | None]] = {}
        with tempfile.TemporaryDirectory(prefix="pibake-write-") as tmp:
            for i, change in enumerate(changes):
                path = _quote(change.path)
                old = before.get(change.path)
                if isinstance(change, WriteFile):
                    if old is not None and old.is_dir:
                        raise PibakeError(f"{self.image}: cannot write {change.path}: it is a directory")
                    mode = change.mode if change.mode is not None else (old.perm if old else 0o644)
                    uid = change.uid if change.uid is not None else (old.uid if old else 0)
                    gid = change.gid if change.gid is not None else (old.gid if old else 0)
                    local = Path(tmp) / str(i)
                    local.write_bytes(change.data)
                    if old is not None:
                        requests.append(f"rm {path}")
                    requests += [
                        f"write {local} {path}",
                        f"sif {path} mode 0{S_IFREG | mode:o}",
                        f"sif {path} uid {uid}",
                        f"sif {path} gid {gid}",
                    ]
                    expected[change.path] = ("file", mode, uid, gid, len(change.data))
                elif isinstance(change, MakeDir):
                    if old is None:
                        requests.append(f"mkdir {path}")
                    elif not old.is_dir:
                        raise PibakeError(f"{self.image}: cannot create directory {change.path}: a file is in the way")
                    requests += [
                        f"sif {path} mode 0{S_IFDIR | change.mode:o}",
                        f"sif {path} uid {change.uid}",
                        f"sif {path} gid {change.gid}",
                    ]
                    expected[change.path] = ("dir", change.mode, change.uid, change.gid, None)
                elif isinstance(change, Symlink):
                    if old is not None:
                        requests.append(f"rm {path}")
                    requests.append(f"symlink {path} {_quote(change.target)}")
                    expected[change.path] = ("symlink", None, None, None, None)
                else:
                    if old is not None:
                        requests.append(f"{'rmdir' if old.is_dir else 'rm'} {path}")
                    expected[change.path] = ("absent", None, None, None, None)
                # A later change to the same path sees this one's result.
                before[change.path] = _placeholder(expected[change.path][0])
            log.debug("debugfs -w on %s: %d requests", self.device, len(requests))
            self.debugfs(requests, write=True)
        after = self.stat_many(touched)
        for p, (kind, want_mode, want_uid, want_gid, want_size) in expected.items():
            _check_landed(self.image, p, after[p], kind, want_mode, want_uid, want_gid, want_size)


def _placeholder(kind: str) -> DirEntry | None:
    """What a path will be once a queued change has run (for later changes in the same batch)."""
    if kind == "absent":
        return None
    return DirEntry(0, (S_IFDIR if kind == "dir" else S_IFREG) | 0o644, 0, 0, "", None)


def _check_landed(
    image: Path,
    path: str,
    entry: DirEntry | None,
    kind: str,
    mode: int | None,
    uid: int | None,
    gid: int | None,
    size: int | None,
) -> None:
    problem = ""
    if kind == "absent":
        problem = "still there: a directory that is not empty?" if entry is not None else ""
    elif entry is None:
        problem = "missing"
    elif kind == "file" and not entry.is_file:
        problem = "not a regular file"
    elif kind == "dir" and not entry.is_dir:
        problem = "not a directory"
    elif kind == "symlink" and not entry.is_symlink:
        problem = "not a symlink"
    elif mode is not None and entry.perm != mode:
        problem = f"mode {entry.perm:o}, wanted {mode:o}"
    elif (uid is not None and entry.uid != uid) or (gid is not None and entry.gid != gid):
        problem = f"owner {entry.uid}:{entry.gid}, wanted {uid}:{gid}"
    elif size is not None and entry.size != size:
        problem = f"size {entry.size}, wanted {size}"
    if problem:
        raise PibakeError(
            f"{image}: debugfs did not make the change to {path} ({problem}). If the reason is not plain, "
            "the root filesystem may be full or damaged: check it with `e2fsck -fn 'IMAGE?offset=BYTES'`"
        )


# ---------------------------------------------------------------- byte ranges


def parse_free_blocks(dumpe2fs_output: str) -> list[tuple[int, int]]:
    """Byte ranges [start, end), from the filesystem's start, of the free blocks `dumpe2fs` lists group by group."""
    block_size = 0
    ranges: list[tuple[int, int]] = []
    for line in dumpe2fs_output.splitlines():
        if line.startswith("Block size:"):
            block_size = int(line.split(":", 1)[1])
        elif line.startswith("  Free blocks: ") and block_size:
            for part in filter(None, (p.strip() for p in line.split(":", 1)[1].split(","))):
                first, _, last = part.partition("-")
                start, end = int(first) * block_size, (int(last or first) + 1) * block_size
                if ranges and ranges[-1][1] == start:
                    ranges[-1] = (ranges[-1][0], end)
                else:
                    ranges.append((start, end))
    return ranges


def free_blocks(image: Path, offset: int) -> list[tuple[int, int]]:
    """The free blocks of the ext2/3/4 at OFFSET in IMAGE, as byte ranges from its start; none if it is not one."""
    try:
        out = run(["dumpe2fs", f"{image}?offset={offset}"])
    except CommandFailed as e:
        log.info("%s at byte %d: no ext2/3/4 free block map (%s)", image.name, offset, e.output.strip()[-200:])
        return []
    return parse_free_blocks(out)
