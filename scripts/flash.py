#!/usr/bin/env python3
"""Thin executable: `scripts/flash.py /dev/sdX` is `pibake flash /dev/sdX` (the demo image onto the card)."""

from __future__ import annotations

import sys

from pibake.cli import main

if __name__ == "__main__":
    sys.exit(main(["flash", *sys.argv[1:]]))
