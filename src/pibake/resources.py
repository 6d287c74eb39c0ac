"""Where pibake's own files live: the checkout it runs from, or the package data of an installed wheel.

A wheel (pyproject.toml, [tool.hatch.build.targets.wheel]) carries them under pibake/data/: the collection as
Ansible finds it (data/ansible_collections/pibake/raspberry: site.yml, ansible.cfg, roles/ with the runtime locks,
playbooks/, plugins/, the Pi-side package in target/, the demo model in models/), the machine profiles (data/qemu),
the kernel recipes (data/buildroot) and the example project (data/examples/car). A checkout, and an editable install
of one, has no src/pibake/data: there each file is where git keeps it, so `make` and the tests see the working tree.

Every other module asks here; none computes a path from its own ``__file__``.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_DATA = _PACKAGE / "data"
# Installed from a wheel: the package carries its data. Otherwise this is src/pibake in a checkout.
INSTALLED = _DATA.is_dir()
_CHECKOUT = _PACKAGE.parents[1]
_SHARED = _DATA if INSTALLED else _CHECKOUT

# The directory holding ansible_collections/pibake/raspberry, for Ansible's collections path (in a checkout,
# .collections/ holds a symlink to the checkout itself: ansible.cfg names it).
COLLECTIONS_PATH = _DATA if INSTALLED else _CHECKOUT / ".collections"
# The collection's root (the checkout itself): what `pibake bake` provisions with.
COLLECTION = COLLECTIONS_PATH / "ansible_collections" / "pibake" / "raspberry" if INSTALLED else _CHECKOUT
SITE = COLLECTION / "site.yml"
ANSIBLE_CFG = COLLECTION / "ansible.cfg"
ROLES = COLLECTION / "roles"
PLAYBOOKS = COLLECTION / "playbooks"
# The runtime locks python_runtime installs from (`make locks`, scripts/lock_runtimes.py).
LOCK_DIR = ROLES / "python_runtime" / "files" / "locks"
# The Pi-side package (target/pibake_target): put on PYTHONPATH to run the model here as on the Pi.
TARGET = COLLECTION / "target"
# The machine profiles (qemu/*.toml).
PROFILES = _SHARED / "qemu"
# The BR2_EXTERNAL tree of the no-initrd kernels (buildroot/).
BUILDROOT = _SHARED / "buildroot"
# The bundled example project (`pibake demo`): pibake.toml and its model/.
EXAMPLE = _SHARED / "examples" / "car"

# Ansible's own default collections path, after pibake's.
_ANSIBLE_DEFAULT_COLLECTIONS = ("~/.ansible/collections", "/usr/share/ansible/collections")


def ansible_env(collection: Path = COLLECTION) -> dict[str, str]:
    """Environment for an ansible-playbook run with COLLECTION (a collection's root, default pibake's): its
    ansible.cfg and, for the installed one, its collections path (ansible.cfg names the checkout's .collections/, a
    symlink a wheel cannot carry)."""
    env = {"ANSIBLE_CONFIG": str(collection / "ansible.cfg")}
    if INSTALLED and collection == COLLECTION:
        env["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join([str(COLLECTIONS_PATH), *_ANSIBLE_DEFAULT_COLLECTIONS])
    return env


def package_pythonpath() -> str:
    """PYTHONPATH for a child Python that imports this very pibake (`python -m pibake.convert.keras`): the directory
    holding the package (site-packages installed, src/ in a checkout) first, then this process's own PYTHONPATH."""
    return os.pathsep.join([str(_PACKAGE.parent), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


def target_pythonpath() -> str:
    """PYTHONPATH for a child Python that runs the Pi-side package on this machine: TARGET first, then this process's
    own PYTHONPATH, so that the child imports every runtime this process finds (and the checks made here hold)."""
    return os.pathsep.join([str(TARGET), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
