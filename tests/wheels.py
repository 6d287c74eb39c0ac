"""Wheels and ELF files for the instruction-set tests: the real tflite-runtime wheel, and made-up ones."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pibake.util.cache import sha256_file

TFLITE_VERSION = "2.11.0"
TFLITE_WHEEL = f"tflite_runtime-{TFLITE_VERSION}-cp39-cp39-manylinux2014_armv7l.whl"
TFLITE_SHA256 = "1cf50a6c51147d70299f4469f6cfab732f38f6ee7999df287155513e742360e6"
TFLITE_SO = "tflite_runtime/_pywrap_tensorflow_interpreter_wrapper.so"

# /proc/cpuinfo features of QEMU's Cortex-A9 (the vexpress-a9 board): NEON and VFPv3, no VFPv4.
CORTEX_A9_FEATURES = ("half", "thumb", "fastmult", "vfp", "edsp", "neon", "vfpv3", "tls", "vfpd32")

# ARM build attribute tags (ARM IHI 0045)
TAG_CPU_ARCH = 6
TAG_THUMB_ISA_USE = 9
TAG_FP_ARCH = 10
TAG_ADVANCED_SIMD_ARCH = 12
TAG_DIV_USE = 44

EM_ARM = 40
EM_X86_64 = 62
EM_AARCH64 = 183


def wheel_cache() -> Path:
    """Where the python_runtime role caches wheels on the controller: $PIBAKE_CACHE/wheels or ~/.cache/pibake/wheels."""
    root = Path(os.environ.get("PIBAKE_CACHE") or Path.home() / ".cache" / "pibake")
    return root / "wheels"


def tflite_armv7l_wheel() -> Path:
    """The real tflite-runtime 2.11.0 armv7l wheel, downloaded once into the shared cache and checked."""
    cache = wheel_cache()
    wheel = cache / TFLITE_WHEEL
    if not wheel.exists():
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"tflite-runtime=={TFLITE_VERSION}",
            "--no-deps",
            "--only-binary=:all:",
            "--platform",
            "manylinux2014_armv7l",
            "--python-version",
            "39",
            "--implementation",
            "cp",
            "--abi",
            "cp39",
            "--disable-pip-version-check",
            "-d",
            str(cache),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            pytest.fail(f"could not download {TFLITE_WHEEL} (needs the package index once):\n{res.stderr[-2000:]}")
    digest = sha256_file(wheel)
    assert digest == TFLITE_SHA256, f"{wheel} has SHA-256 {digest}: delete it so the tests download it again"
    return wheel


def _uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def arm_attributes(tags: dict[int, int]) -> bytes:
    """An .ARM.attributes section body: one "aeabi" subsection with file-scope TAGS."""
    body = b"".join(_uleb(tag) + _uleb(value) for tag, value in tags.items())
    file_scope = _uleb(1) + struct.pack("<I", 1 + 4 + len(body)) + body
    vendor = b"aeabi\0"
    return b"A" + struct.pack("<I", 4 + len(vendor) + len(file_scope)) + vendor + file_scope


def elf32(tags: dict[int, int] | None, *, machine: int = EM_ARM) -> bytes:
    """A minimal 32-bit little-endian shared object: no code, and (unless TAGS is None) build attributes."""
    shstrtab = b"\0.shstrtab\0.ARM.attributes\0"
    sections = [(0, 0, b""), (1, 3, shstrtab)]  # (name offset, type, data)
    if tags is not None:
        sections.append((11, 0x70000003, arm_attributes(tags)))
    data = b""
    offsets = []
    for _, _, blob in sections:
        offsets.append(52 + len(data))
        data += blob
    shoff = 52 + len(data)
    ident = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
    header = ident + struct.pack(
        "<HHIIIIIHHHHHH", 3, machine, 1, 0, 0, shoff, 0x05000400, 52, 32, 0, 40, len(sections), 1
    )
    shdrs = b"".join(
        struct.pack("<IIIIIIIIII", name, kind, 0, 0, off if kind else 0, len(blob), 0, 0, 1, 0)
        for (name, kind, blob), off in zip(sections, offsets, strict=True)
    )
    return header + data + shdrs


def elf64(machine: int) -> bytes:
    """A minimal 64-bit little-endian shared object header for MACHINE (x86-64, AArch64)."""
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    return ident + struct.pack("<HHIQQQIHHHHHH", 3, machine, 1, 0, 0, 0, 0, 64, 56, 0, 64, 0, 0)


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path
