"""`pibake init`: write a commented pibake.toml beside a model; prints what it filled in and what is left."""

from __future__ import annotations

import argparse
from pathlib import Path


def _init(a: argparse.Namespace) -> int:
    from pibake import init, project
    from pibake.errors import PibakeError

    res = init.init(a.directory, model=a.model, force=a.force)
    print(f"wrote {res.path}")
    if res.model is None:
        found = f" (there are several: {', '.join(c.name for c in res.candidates)})" if res.candidates else ""
        print(f"  model.file: not set{found}: edit it, or run again with --model FILE --force")
    else:
        print(f"  model.file     {res.model}")
        print(f"  model.labels   {res.labels or 'no labels.txt beside the model: set it'}")
        print(f"  model.samples  {res.samples or 'no samples/ beside the model: set it'}")
        if res.converts_to is not None:
            print(f"  a Keras model: `pibake bake` converts it to TFLite first, into {res.converts_to}")
            if res.tensorflow_missing:
                print(f"  before baking: {res.tensorflow_missing}")
        # Loaded as `pibake bake` will load it: the file is written either way, and says what is still missing.
        try:
            project.load(res.path.parent)
        except PibakeError as exc:
            print(f"it does not load yet: {exc}")
        else:
            print(f"it loads: `pibake bake {res.path.parent}` takes it")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `init` to the top-level subparsers SUB."""
    p = sub.add_parser(
        "init",
        help="write a commented pibake.toml for your model (every key, defaults shown)",
        description="Write DIR/pibake.toml: the model, and labels.txt and samples/ where they are beside it, filled "
        "in; every other key commented out with its default and what it does. With a model, the file is then loaded "
        "as `pibake bake` loads it, and init says whether it loads or what is still missing (labels, samples, a "
        "model that is not one). An existing pibake.toml is refused (exit 3) unless --force.",
    )
    p.add_argument(
        "directory",
        nargs="?",
        type=Path,
        default=None,
        metavar="DIR",
        help="where pibake.toml goes (default: the model's directory, else the current one)",
    )
    p.add_argument("--model", type=Path, default=None, metavar="FILE", help="the model: .tflite, .onnx, .keras, .h5")
    p.add_argument("--force", action="store_true", help="replace an existing pibake.toml")
    p.set_defaults(func=_init)
