#!/usr/bin/env python3
"""Thin executable: `scripts/bench_flash.py` is `python -m pibake.bench.flash` (flash against dd, bmap against full)."""

from __future__ import annotations

import sys

from pibake.bench.flash import main

if __name__ == "__main__":
    sys.exit(main())
