#!/usr/bin/env python3
"""Convert a Keras model (.keras or .h5) to a float32 TensorFlow Lite model for the Pi: `pibake.convert.keras`.

    scripts/convert_model.py MODEL.keras -o OUT.tflite

The converter lives in the package (so an installed pibake has it: `python -m pibake.convert.keras`, and `pibake
bake` runs it for a Keras project); this is its command line under its old name. Options, checks and exit codes are
pibake.convert.keras's: 0 written, 2 bad input, 4 converted but refused, 5 no TensorFlow (`pip install -e
'.[convert]'`).
"""

from __future__ import annotations

import sys

from pibake.convert.keras import main

if __name__ == "__main__":
    sys.exit(main(prog="convert_model.py"))
