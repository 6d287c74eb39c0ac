"""The harness is laid out by pipeline stage: a verb's code is where its name says, every module says what it owns."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pibake.cli import build_parser

SRC = Path(__file__).resolve().parents[2] / "src" / "pibake"
MODULES = sorted(p for p in SRC.rglob("*.py") if p.is_file())


def _subcommands(parser: object) -> dict[str, object]:
    for action in getattr(parser, "_actions", []):
        if action.__class__.__name__ == "_SubParsersAction":
            return dict(action.choices)
    return {}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_every_module_opens_with_a_one_line_docstring(path: Path) -> None:
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc, f"{path} has no module docstring saying what it owns"
    first = doc.split("\n", 1)[0]
    assert first.strip() and len(first) <= 120, f"{path}: the docstring's first line should say it in one line"


def test_every_verb_group_has_its_cli_module_and_its_stage() -> None:
    verbs = _subcommands(build_parser())
    assert set(verbs) >= {"init", "bake", "image", "emulate", "kernel", "flash", "bench", "demo", "preflight"}
    for verb in verbs:
        assert (SRC / "cli" / f"{verb}.py").is_file(), f"`pibake {verb}` has no module pibake/cli/{verb}.py"
        stage = "bake" if verb == "demo" else verb  # `pibake demo` is `pibake bake` on examples/car
        assert (SRC / stage).is_dir() or (SRC / f"{stage}.py").is_file(), f"`pibake {verb}` has no stage pibake/{stage}"


def test_each_image_action_lives_in_its_own_module() -> None:
    actions = _subcommands(_subcommands(build_parser())["image"])
    assert set(actions) == {"build", "check", "fetch", "prepare", "finalize"}
    for action in actions:
        assert (SRC / "image" / f"{action}.py").is_file(), f"`pibake image {action}` is not in pibake/image/{action}.py"


def test_nothing_is_imported_by_file_path() -> None:
    for path in MODULES:
        text = path.read_text()
        assert "spec_from_file_location" not in text, f"{path} imports a module by its file path"
        assert "sys.path.insert" not in text and "sys.path.append" not in text, f"{path} edits sys.path"


def test_the_cli_does_no_stage_work() -> None:
    """The CLI modules parse and print: no subprocess, no pibake.util, no file reads or writes of their own.

    One exception: main() takes util.progress (``from pibake.util import progress``), since how a command's
    progress is printed (live rows on a terminal, plain log lines elsewhere) is printing, the CLI's to choose.
    """
    for path in (SRC / "cli").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert all(a.name != "subprocess" for a in node.names), f"{path} runs programs itself"
            if isinstance(node, ast.ImportFrom) and node.module:
                printing = node.module == "pibake.util" and [a.name for a in node.names] == ["progress"]
                assert printing or not node.module.startswith("pibake.util"), (
                    f"{path} reaches into pibake.util ({node.module})"
                )
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                assert name not in {"read_text", "read_bytes", "write_text", "write_bytes", "open"}, (
                    f"{path}:{node.lineno} touches files; a stage should"
                )


def test_only_resources_finds_files_from_its_own_location() -> None:
    """pibake.resources says where the collection, target/, the profiles and the example are, in a checkout and in
    the wheel; a path computed from another module's __file__ would hold in one of them only."""
    for path in MODULES:
        if path.name != "resources.py":
            assert "__file__" not in path.read_text(), f"{path} finds files from __file__: ask pibake.resources"


def test_a_checkout_finds_its_own_files() -> None:
    from pibake import resources

    repo = SRC.parents[1]
    assert not resources.INSTALLED
    found = {"collection": resources.COLLECTION, "site": resources.SITE, "target": resources.TARGET}
    found |= {"profiles": resources.PROFILES, "example": resources.EXAMPLE}
    assert found == {
        "collection": repo,
        "site": repo / "site.yml",
        "target": repo / "target",
        "profiles": repo / "qemu",
        "example": repo / "examples" / "car",
    }
    assert (resources.COLLECTIONS_PATH / "ansible_collections/pibake/raspberry").resolve() == repo
    assert resources.ansible_env() == {"ANSIBLE_CONFIG": str(repo / "ansible.cfg")}
