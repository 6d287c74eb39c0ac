"""`pibake init`: write a commented pibake.toml beside the user's model, every key in it, ready to load."""

from __future__ import annotations

import json
import logging
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

from pibake import convert, project
from pibake.errors import Refused, UsageError

log = logging.getLogger(__name__)

LABELS = "labels.txt"
SAMPLES = "samples"


@dataclass(frozen=True)
class Written:
    """What `init` wrote: the project file, and the model, labels and samples it named (None: left to fill in)."""

    path: Path
    model: Path | None
    labels: Path | None
    samples: Path | None
    # Model files found in the directory when none was given and there was not exactly one.
    candidates: tuple[Path, ...] = ()
    # A Keras model: the .tflite `pibake bake` converts it to (DIRECTORY/build/<stem>.tflite), and why it cannot on
    # this machine yet (convert.tensorflow_missing: no TensorFlow), or None.
    converts_to: Path | None = None
    tensorflow_missing: str | None = None


def init(directory: Path | None = None, *, model: Path | None = None, force: bool = False) -> Written:
    """Write DIRECTORY/pibake.toml (default: the model's directory, else the current one) for MODEL.

    Without MODEL, the directory's one model file is taken; with none or several, model.file is
    left for the user to fill in. labels.txt and a samples/ directory beside the model are filled in.
    Every other key is written commented out, with its default and what it does. An existing
    pibake.toml is Refused unless FORCE; MODEL must exist and be a model file pibake takes. For a Keras
    MODEL, the result says where bake will convert it to and whether TensorFlow is here to do it.
    """
    if model is not None:
        model = model.resolve()
        if not model.is_file():
            raise UsageError(f"no model file {model}")
        if model.suffix.lower() not in project.MODEL_FORMATS:
            raise UsageError(f"{model.name}: not a model file pibake takes ({', '.join(project.MODEL_FORMATS)})")
    directory = (directory or (model.parent if model else Path.cwd())).resolve()
    if not directory.is_dir():
        raise UsageError(f"no directory {directory}")
    path = directory / project.PROJECT_FILE
    if path.exists() and not force:
        raise Refused(f"{path} exists; pass --force to replace it")

    candidates: tuple[Path, ...] = ()
    if model is None:
        candidates = tuple(
            sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in project.MODEL_FORMATS)
        )
        if len(candidates) == 1:
            model, candidates = candidates[0], ()
    values: dict[str, str] = {}
    labels = samples = None
    if model is not None:
        values["model.file"] = _string(_relative(model, directory))
        if (model.parent / LABELS).is_file():
            labels = model.parent / LABELS
            values["model.labels"] = _string(_relative(labels, directory))
        if (model.parent / SAMPLES).is_dir():
            samples = model.parent / SAMPLES
            values["model.samples"] = _string(_relative(samples, directory) + "/")
    text = template(values, model_missing=model is None, candidates=[_relative(c, directory) for c in candidates])
    part = path.with_name(path.name + ".part")
    part.write_text(text, encoding="utf-8")
    part.replace(path)
    log.debug("wrote %s", path)
    converts_to = missing = None
    if model is not None and project.MODEL_FORMATS[model.suffix.lower()] == "keras":
        converts_to = convert.tflite_path(model, directory / project.BUILD_DIR)
        missing = convert.tensorflow_missing()
    return Written(path, model, labels, samples, candidates, converts_to, missing)


def template(values: dict[str, str], *, model_missing: bool = False, candidates: list[str] | None = None) -> str:
    """The commented pibake.toml: VALUES (dotted key -> TOML text) set, every other key commented out."""
    lines = [
        "# pibake.toml: the project `pibake bake` turns into a card image, tested on the emulated board.",
        "# Every key is here. A commented-out key shows its default (or an example, where the default comes",
        "# from the model or the board); uncomment it to change it. Paths are relative to this file. The README's",
        '# "Project file (pibake.toml)" section describes each key.',
    ]
    for table, about in project.TABLES.items():
        keys = [k for k in project.SCHEMA if k.table == table]
        # A table of required keys (Wi-Fi) is written whole, commented out, unless set.
        off = any(k.required for k in keys) and not any(k.name in values for k in keys) and table != "model"
        lines += ["", *_comment(about), f"{'# ' if off else ''}[{table}]"]
        for key in keys:
            lines += _comment(key.doc)
            if key.name in values:
                lines.append(f"{key.leaf} = {values[key.name]}")
            elif key.name == "model.file" and model_missing:
                found = f" (found: {', '.join(candidates)})" if candidates else ""
                lines.append(f"# Set this to your model file{found}.")
                lines.append(f"{key.leaf} = {key.example}")
            else:
                lines.append(f"# {key.leaf} = {key.default or key.example}")
    return "\n".join(lines) + "\n"


def _comment(text: str) -> list[str]:
    return ["# " + line for part in text.split("\n") for line in textwrap.wrap(part, 98, break_on_hyphens=False)]


def _relative(path: Path, directory: Path) -> str:
    return Path(os.path.relpath(path, directory)).as_posix()


def _string(text: str) -> str:
    # A JSON string is a TOML basic string: the same quotes and escapes.
    return json.dumps(text, ensure_ascii=False)
