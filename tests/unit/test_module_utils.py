"""One ISA implementation, one board table, one lock reader: plugins/module_utils, shared by collection and harness.

The harness imports the very files (src/pibake/_module_utils/ links to them), the module's
``board`` choices and the roles' argument_specs name the table's boards, and the module still
runs where only the built collection is installed.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pibake import _module_utils, boards, isa
from pibake._module_utils import boards as table
from pibake._module_utils import isa as rules
from pibake.emulate import profiles
from tests.conftest import REPO

MODULE_UTILS = REPO / "plugins" / "module_utils"
BRIDGE = Path(_module_utils.__file__).parent
MODULE_PATH = REPO / "plugins" / "modules" / "wheel_isa_check.py"
BIN = Path(sys.executable).parent


def test_the_harness_imports_the_collections_files_not_copies() -> None:
    shared = sorted(p.name for p in MODULE_UTILS.glob("*.py"))
    assert shared == ["boards.py", "isa.py", "wheel_lock.py"]
    for name in shared:
        link = BRIDGE / name
        assert link.is_symlink(), f"{link} must be a link to {MODULE_UTILS / name}, not a copy"
        assert link.resolve() == (MODULE_UTILS / name).resolve()
    assert Path(rules.__file__).resolve() == MODULE_UTILS / "isa.py"
    assert Path(table.__file__).resolve() == MODULE_UTILS / "boards.py"


def test_pibake_isa_and_boards_are_the_shared_objects() -> None:
    for name in ("Arch", "FP", "SIMD", "InstructionSet", "ElfObject", "Artifact", "from_cpu_features", "missing"):
        assert getattr(isa, name) is getattr(rules, name), name
    assert boards.BOARDS is table.BOARDS
    assert boards.Board is table.Board
    assert boards.DEFAULT_BOARD == table.DEFAULT_BOARD
    assert all(isinstance(b.isa, isa.InstructionSet) for b in boards.BOARDS.values())


def _imports(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement at the top of TREE, and whether a try/except ImportError guards it."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append((node, False))
        elif isinstance(node, ast.Try):
            guarded = any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers
            )
            found += [(n, guarded) for n in node.body if isinstance(n, ast.Import | ast.ImportFrom)]
    return found


@pytest.mark.parametrize("name", ["isa.py", "boards.py"])
def test_module_utils_import_only_the_standard_library_and_a_guarded_pyelftools(name: str) -> None:
    """What Ansible ships with the module to any host: nothing of pibake, nothing unguarded outside the stdlib."""
    for node, guarded in _imports(ast.parse((MODULE_UTILS / name).read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            continue  # a sibling in module_utils, which Ansible ships too
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for module in modules:
            top = module.split(".")[0]
            if top == "elftools":
                assert guarded, f"{name}: import {module} must be guarded so the module can call missing_required_lib"
            else:
                assert top in sys.stdlib_module_names or top == "__future__", f"{name} imports {module}"


def test_the_modules_board_choices_are_the_tables() -> None:
    text = MODULE_PATH.read_text()
    tree = ast.parse(text)
    [doc] = [
        n.value
        for n in tree.body
        if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "DOCUMENTATION" for t in n.targets)
    ]
    assert isinstance(doc, ast.Constant) and isinstance(doc.value, str)
    options = yaml.safe_load(doc.value)["options"]
    assert options["board"]["choices"] == boards.names()
    assert '"choices": list(BOARDS)' in text  # the argument_spec takes them from the table itself


def _board_options() -> list[tuple[Path, str, dict[str, object]]]:
    found = []
    for spec_file in sorted(REPO.glob("roles/*/meta/argument_specs.yml")):
        for entry in (yaml.safe_load(spec_file.read_text()) or {}).get("argument_specs", {}).values():
            for option, spec in (entry.get("options") or {}).items():
                if option.endswith("_board"):
                    found.append((spec_file, option, spec))
    return found


def test_every_roles_board_choices_are_the_tables_boards() -> None:
    options = _board_options()
    assert options, "no role takes a board: this test lost its subject"
    for spec_file, option, spec in options:
        where = f"{spec_file.relative_to(REPO)}: {option}"
        assert spec.get("choices") == boards.names(), f"{where} lists other boards than the board table"
        assert spec.get("default") == boards.DEFAULT_BOARD, f"{where} defaults to another board than pibake"


def test_every_boards_emulation_names_a_profile_and_cpu_that_exist() -> None:
    for board in boards.BOARDS.values():
        assert (board.profile is None) == (board.cpu is None), board.name
        if board.profile and board.cpu:
            assert board.cpu in profiles.load(board.profile).cpus, board.name
        assert board.emulation
        assert board.upstream_dtb.endswith(".dtb") and board.downstream_dtb.endswith(".dtb")
        assert board.firmware and board.default_kernel.startswith("kernel")


def test_the_module_runs_from_the_built_collection_alone(tmp_path: Path) -> None:
    """ansible-galaxy builds the collection (no harness in it), installs it elsewhere; the module runs from there."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(tmp_path / "none.cfg"),  # not this checkout's: no .collections/ link
        "ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "collections"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
    }
    (tmp_path / "none.cfg").write_text("[defaults]\n")

    def ansible(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, env=env, cwd=tmp_path, check=False
        )

    built = ansible("ansible-galaxy", "collection", "build", str(REPO), "--output-path", str(tmp_path))
    assert built.returncode == 0, built.stdout + built.stderr
    [tarball] = tmp_path.glob("pibake-raspberry-*.tar.gz")
    names = subprocess.run(["tar", "-tzf", str(tarball)], capture_output=True, text=True, check=True).stdout.split()
    assert {"plugins/module_utils/isa.py", "plugins/module_utils/boards.py"} <= set(names)
    assert not [n for n in names if n.startswith("src/")]
    installed = ansible("ansible-galaxy", "collection", "install", str(tarball), "-p", str(tmp_path / "collections"))
    assert installed.returncode == 0, installed.stdout + installed.stderr

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    args = {"path": str(wheels), "board": "pi2", "cpu_features": ["half thumb vfp neon vfpv3 tls"]}
    ran = ansible("ansible", "localhost", "-m", "pibake.raspberry.wheel_isa_check", "-a", json.dumps(args))
    match = re.search(r"^localhost \| \S+ => (\{.*\})\s*$", ran.stdout, re.MULTILINE | re.DOTALL)
    assert match, ran.stdout + ran.stderr
    result = json.loads(match.group(1))
    assert ran.returncode == 0, result
    assert result["board"]["has"] == boards.get("pi2").isa.describe()
    assert result["cpu"]["has"] == "ARMv7, VFPv3 (D32), NEON"
