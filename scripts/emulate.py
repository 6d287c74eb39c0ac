#!/usr/bin/env python3
"""Thin executable: `scripts/emulate.py start|stop|status|ssh|run ...` is `pibake emulate ...`."""

from __future__ import annotations

import sys

from pibake.cli import main

if __name__ == "__main__":
    sys.exit(main(["emulate", *sys.argv[1:]]))
