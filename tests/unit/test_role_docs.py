"""Each role's meta/argument_specs.yml documents every option, and agrees with its defaults/main.yml.

The README's variable table is generated from argument_specs (`make docs`; `make lint` fails when it is stale),
and Ansible takes a role's defaults from defaults/main.yml alone: a default written only in argument_specs, or a
different one there, would be documented and never used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = sorted(path.parent.parent for path in REPO.glob("roles/*/meta/argument_specs.yml"))


def _options(role: Path) -> dict[str, dict[str, Any]]:
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
    options: dict[str, dict[str, Any]] = specs["argument_specs"]["main"]["options"]
    return options


def _defaults(role: Path) -> dict[str, Any]:
    defaults: dict[str, Any] = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    return defaults


def test_every_role_is_checked() -> None:
    assert {role.name for role in ROLES} >= {"python_runtime", "model", "inference_service"}


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_every_option_has_a_type_and_a_description(role: Path) -> None:
    for name, spec in _options(role).items():
        assert spec.get("type"), f"{role.name}: {name} has no type in meta/argument_specs.yml"
        if spec["type"] == "list":
            assert spec.get("elements"), f"{role.name}: {name} is a list without `elements`"
        description = spec.get("description")
        lines = [description] if isinstance(description, str) else description or []
        assert any(line.strip() for line in lines), f"{role.name}: {name} has no description"


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_argument_specs_and_defaults_agree(role: Path) -> None:
    options, defaults = _options(role), _defaults(role)
    assert not set(defaults) - set(options), f"{role.name}: in defaults/main.yml, not in argument_specs"
    documented = {name for name, spec in options.items() if "default" in spec}
    assert not documented - set(defaults), f"{role.name}: a default in argument_specs only, which Ansible never uses"
    for name, value in defaults.items():
        assert options[name].get("default") == value, f"{role.name}: {name}'s default differs in argument_specs"
        assert options[name].get("required") is not True, f"{role.name}: {name} has a default and is required"


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_readme_keeps_its_sections_around_the_generated_table(role: Path) -> None:
    readme = (role / "README.md").read_text()
    headings = [line for line in readme.splitlines() if line.startswith("## ")]
    assert headings[:3] == ["## Requirements", "## Role Variables", "## Example Playbook"]
    begin, end = readme.index("<!-- BEGIN_ANSIBLE_DOCS -->\n"), readme.index("<!-- END_ANSIBLE_DOCS -->\n")
    variables = readme.index("## Role Variables")
    assert variables < begin < end < readme.index("## Example Playbook")
    for name in _options(role):
        assert f"| `{name}` |" in readme[begin:end], f"{role.name}: {name} is not in the README's table"
