"""Keras models (.keras, .h5) as the TFLite models bake runs: converted on this machine, cached in the build directory.

`to_tflite` writes DIRECTORY/<stem>.tflite (bake: the project's build/) by running `pibake.convert.keras` in a child
Python: TensorFlow is the host-only extra ``convert`` (``pip install 'pibake[convert]'``) and never enters pibake's own
process, as the Pi-side package's predict command and project's shape reader run apart too. Beside the model it writes
<stem>.tflite.json, the record of what it was converted from (the Keras file's sha256), with what (TensorFlow's
version, keras.RECIPE) and the .tflite's own sha256: while those still hold, a later call converts nothing. Both files
are written to a temporary name and renamed, so an interrupted run leaves nothing a later one could take as finished.

The .tflite reader (`tflite`) and the converter (`keras`) are modules of their own, imported here only where used (the
child runs `keras` as __main__); importing this package imports neither TensorFlow nor numpy.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pibake import resources
from pibake.errors import KINDS, CommandFailed, PibakeError, ToolMissing
from pibake.util.cache import sha256_file
from pibake.util.proc import last_json_object, run

log = logging.getLogger(__name__)

# The record beside each converted model: <stem>.tflite + RECORD_SUFFIX.
RECORD_SUFFIX = ".json"
# A conversion loads TensorFlow (about 9 s here on 2 busy cores) and a model; a large one takes minutes.
TIMEOUT_S = 1800
_KIND_BY_EXIT_CODE = {kind.exit_code: kind for kind in KINDS}


@dataclass(frozen=True)
class Conversion:
    """A Keras model and the .tflite made of it: both files with their sha256, the TensorFlow version that converted
    it, its operator codes as (name, version), the largest |Keras - TFLite| on the converter's random input, and
    whether it came from the cache (nothing converted by this call)."""

    keras: Path
    keras_sha256: str
    tflite: Path
    tflite_sha256: str
    tensorflow: str
    ops: tuple[tuple[str, int], ...]
    max_abs_diff: float
    cached: bool

    def describe(self) -> str:
        """For the report: "converted from FILE (sha256 HEX) with TensorFlow VERSION"."""
        return f"converted from {self.keras} (sha256 {self.keras_sha256}) with TensorFlow {self.tensorflow}"


def tflite_path(model: Path, directory: Path) -> Path:
    """Where `to_tflite` puts the Keras MODEL's conversion: DIRECTORY/<MODEL's stem>.tflite."""
    return directory / f"{model.stem}.tflite"


def tensorflow_missing() -> str | None:
    """Why a Keras model cannot be converted on this machine (TensorFlow is not importable), naming the extra to
    install; None when it can. Looks the module up without importing it."""
    if importlib.util.find_spec("tensorflow") is not None:
        return None
    return (
        "converting a Keras model to TFLite needs TensorFlow, which is not installed here: it is pibake's host-only "
        "extra convert, pip install 'pibake[convert]' (in a checkout: pip install -e '.[convert]')"
    )


def to_tflite(model: Path, directory: Path) -> Conversion:
    """The Keras model MODEL (.keras or .h5) as the float32 TFLite model DIRECTORY/<stem>.tflite (keras.RECIPE).

    When the record beside it (<stem>.tflite.json) names MODEL's sha256 and the same recipe, and the .tflite's own
    sha256 is the one recorded, that file is the answer (``cached``) and nothing runs; otherwise `pibake.convert.keras`
    converts MODEL in a child Python and the record is written after it. DIRECTORY is made when missing.

    Raises ToolMissing, naming the ``convert`` extra, when TensorFlow is not importable here (checked before anything
    is written); UsageError when MODEL is not a Keras model Keras loads, or not one TFLite builtins can express;
    VerificationFailed when the result has ops above version 1 or differs from Keras; PibakeError when the converter
    dies without saying why. An existing .tflite is left as it was whenever this raises.
    """
    keras_sha256 = sha256_file(model)
    tflite = tflite_path(model, directory)
    record = tflite.with_name(tflite.name + RECORD_SUFFIX)
    cached = _cached(model, keras_sha256, tflite, record)
    if cached is not None:
        log.info("%s: unchanged (sha256 %s), %s is its conversion", model.name, keras_sha256[:12], tflite)
        return cached
    missing = tensorflow_missing()
    if missing:
        raise ToolMissing(f"{model}: {missing}")
    directory.mkdir(parents=True, exist_ok=True)
    answer = _run_converter(model, tflite)
    conversion = Conversion(
        keras=model,
        keras_sha256=keras_sha256,
        tflite=tflite,
        tflite_sha256=sha256_file(tflite),
        tensorflow=str(answer["tensorflow"]),
        ops=tuple((str(name), int(version)) for name, version in answer["ops"]),
        max_abs_diff=float(answer["max_abs_diff"]),
        cached=False,
    )
    _write_record(record, conversion)
    log.info("%s: converted to %s with TensorFlow %s", model.name, tflite, conversion.tensorflow)
    return conversion


def _cached(model: Path, keras_sha256: str, tflite: Path, record: Path) -> Conversion | None:
    """The conversion RECORD describes, when it is of MODEL's bytes (KERAS_SHA256) by today's recipe and TFLITE is
    still the file it wrote; None otherwise (no record, another model, a changed or missing .tflite)."""
    from pibake.convert.keras import RECIPE

    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        if (
            data["keras_sha256"] != keras_sha256
            or data["recipe"] != RECIPE
            or not tflite.is_file()
            or sha256_file(tflite) != data["tflite_sha256"]
        ):
            return None
        return Conversion(
            keras=model,
            keras_sha256=keras_sha256,
            tflite=tflite,
            tflite_sha256=str(data["tflite_sha256"]),
            tensorflow=str(data["tensorflow"]),
            ops=tuple((str(name), int(version)) for name, version in data["ops"]),
            max_abs_diff=float(data["max_abs_diff"]),
            cached=True,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_record(record: Path, conversion: Conversion) -> None:
    """RECORD (JSON) for CONVERSION, through a temporary file and a rename (keras.write_atomically)."""
    from pibake.convert.keras import RECIPE, write_atomically

    data = {
        "keras": str(conversion.keras),
        "keras_sha256": conversion.keras_sha256,
        "tflite_sha256": conversion.tflite_sha256,
        "tensorflow": conversion.tensorflow,
        "recipe": RECIPE,
        "ops": [list(op) for op in conversion.ops],
        "max_abs_diff": conversion.max_abs_diff,
    }
    write_atomically((json.dumps(data, indent=1) + "\n").encode(), record)


def _run_converter(model: Path, tflite: Path) -> dict[str, Any]:
    """`pibake.convert.keras MODEL -o TFLITE --json` in a child Python (this interpreter, with this pibake on its
    PYTHONPATH); its report. Raises the error kind its exit code names, with its message; PibakeError when it printed
    none (killed, crashed)."""
    argv = [sys.executable, "-B", "-m", "pibake.convert.keras", str(model), "-o", str(tflite), "--json"]
    env = {"PYTHONPATH": resources.package_pythonpath(), "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        out = run(argv, env=env, timeout=TIMEOUT_S)
    except CommandFailed as e:
        answer = last_json_object(e.output)
        kind = _KIND_BY_EXIT_CODE.get(e.returncode)
        if kind is not None and answer is not None and "message" in answer:
            raise kind(str(answer["message"])) from e
        how = f"signal {-e.returncode}" if e.returncode < 0 else f"exit {e.returncode}"
        raise PibakeError(f"{model}: the conversion to TFLite failed ({how}):\n{e.output[-2000:]}") from e
    answer = last_json_object(out)
    if answer is None or "tensorflow" not in answer:
        raise PibakeError(f"{model}: the converter printed no report:\n{out[-2000:]}")
    return answer
