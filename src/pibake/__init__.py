"""pibake: bake a Raspberry Pi image that carries an ML model, prove it in QEMU, burn it."""

from __future__ import annotations

__version__ = "0.1.0"
