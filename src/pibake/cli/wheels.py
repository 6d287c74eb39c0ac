"""`pibake wheels fetch`: download a lock's wheels into the cache and check each SHA-256 (exit 4 if one differs)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _fetch(a: argparse.Namespace) -> int:
    from pibake import wheels

    result = wheels.fetch(a.lock, cache=a.cache, python=a.python)
    for pin, path, digest in result.wheels:
        state = "downloaded" if path.name in result.downloaded else "cached"
        print(f"{pin.name}=={pin.version}  {path}  sha256:{digest}  {path.stat().st_size} bytes  {state}")
    print(
        f"{len(result.wheels)} wheels, {result.total_bytes / 1e6:.1f} MB, {len(result.downloaded)} downloaded "
        f"in {result.seconds:.1f} s"
    )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `wheels` and its actions to the top-level subparsers SUB."""
    p = sub.add_parser(
        "wheels",
        help="download a runtime lock's wheels for the target, every SHA-256 checked",
        description="The runtime locks (roles/python_runtime/files/locks/<runtime>-<python>-<platform>.txt, "
        "made by `make locks`) pin a runtime's whole dependency closure, one wheel and one SHA-256 per package, "
        "for the Pi's Python and platform.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    f = actions.add_parser(
        "fetch",
        help="download the lock's wheels into the cache and check them",
        description="Download every wheel the lock pins, for the lock's platform and Python (pip download "
        "--platform ... --only-binary=:all: --no-deps), into the cache, and check each file's SHA-256 against "
        "the lock. Wheels already cached with the right digest are not downloaded again. pip uses its default "
        "index, or the one PIP_INDEX_URL, PIP_FIND_LINKS or pip.conf name. A wheel whose digest differs is "
        "deleted and refused with exit status 4 (verification failed), naming the file and both digests.",
    )
    f.add_argument("--lock", type=Path, required=True, help="the lock file (roles/python_runtime/files/locks/*.txt)")
    f.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="directory to keep the wheels in (default: $PIBAKE_CACHE/wheels, else ~/.cache/pibake/wheels)",
    )
    f.add_argument("--python", default=None, help="Python whose pip downloads (default: the one running pibake)")
    f.set_defaults(func=_fetch)
