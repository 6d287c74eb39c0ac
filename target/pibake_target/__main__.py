"""`python3 -m pibake_target serve|predict|time ...`."""

from __future__ import annotations

import sys

from pibake_target.cli import main

sys.exit(main())
