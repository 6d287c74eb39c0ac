"""What `molecule verify` checks on the emulated Pi after site.yml has run.

The pinned runtime is installed and imports (the scenario's: LiteRT from its lock into the venv on the 64-bit
trixie base, tflite-runtime 2.11 in the system Python on the legacy bullseye base), the model gives the same
answers on the guest as on the controller (the reference run), and the image's security basics hold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from verify_helpers import GuestRuntime, before_reboot_only, guest_runtime, role_defaults

REPO = Path(__file__).resolve().parents[3]
MODELS = REPO / "models"
# Float32 inference on two CPUs and two TFLite builds: equal to well within this.
TOLERANCE = 1e-5


RUNTIME = role_defaults("python_runtime")
MODEL = role_defaults("model")
MODEL_ROOT: str = MODEL["model_root"]
MODEL_DIR = f"{MODEL_ROOT}/current"
MODEL_FILE: str = MODEL["model_file"]
MODEL_VERSION = (MODELS / "VERSION").read_text().split()[0]
SAMPLES = sorted(MODELS.glob("samples/*.png"))
PACKAGE_DIR: str = RUNTIME["python_runtime_package_dir"]


@pytest.fixture(scope="module")
def runtime(host: Any) -> GuestRuntime:
    """The runtime the scenario's inventory has python_runtime install on this guest."""
    return guest_runtime(host.ansible.get_variables())


def _load_predict() -> Callable[[str, str, list[str]], dict[str, Any]]:
    """The predict() of the repository's Pi-side package (target/ is on pytest's pythonpath)."""
    from pibake_target.predict import predict

    return predict


def _by_image(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {result["image"]: result for result in report["results"]}


@pytest.fixture(scope="module")
def host_report() -> dict[str, Any]:
    """The reference: the model run on the controller over every sample."""
    assert SAMPLES, f"no sample images in {MODELS / 'samples'}"
    predict = _load_predict()
    return predict(str(MODELS / MODEL_FILE), str(MODELS / "labels.txt"), [str(p) for p in SAMPLES])


@pytest.fixture(scope="module")
def guest_report(host: Any, runtime: GuestRuntime) -> dict[str, Any]:
    """The model run on the guest by the installed package's predict command over the same samples, with the
    runtime's Python (the venv's on the 64-bit base)."""
    images = [f"{MODEL_DIR}/samples/{p.name}" for p in SAMPLES]
    cmd = host.run(
        "PYTHONPATH=%s %s -B -m pibake_target predict --model %s --labels %s" + " %s" * len(images),
        PACKAGE_DIR,
        runtime.python,
        f"{MODEL_DIR}/{MODEL_FILE}",
        f"{MODEL_DIR}/labels.txt",
        *images,
    )
    assert cmd.rc == 0, f"the predict command failed on the guest (rc {cmd.rc}):\n{cmd.stderr}"
    # One JSON line; anything a runtime chatters before it is not ours.
    report: dict[str, Any] = json.loads(cmd.stdout.strip().splitlines()[-1])
    return report


def test_runtime_is_installed_at_the_pinned_version(host: Any, runtime: GuestRuntime) -> None:
    # From the installed distribution's metadata: testinfra's host.pip runs pip, 88 s on the emulated Pi.
    version = host.run(
        "%s -I -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' %s",
        runtime.python,
        runtime.distribution,
    )
    assert version.rc == 0, version.stderr
    assert version.stdout.strip() == runtime.version


@before_reboot_only
def test_runtime_wheels_on_the_guest_are_the_pinned_ones(host: Any, runtime: GuestRuntime) -> None:
    wrong = {}
    for path, digests in runtime.wheels:
        wheel = host.file(path)
        if not wheel.is_file:
            wrong[path] = "missing"
        elif wheel.sha256sum not in digests:
            wrong[path] = f"SHA-256 {wheel.sha256sum}, pinned {' or '.join(digests)}"
    assert not wrong, f"wheels on the guest that are not the pinned ones: {wrong}"


def test_runtime_imports_with_its_python(host: Any, runtime: GuestRuntime) -> None:
    cmd = host.run("%s -c 'import %s.interpreter'", runtime.python, runtime.module)
    assert cmd.rc == 0, cmd.stderr


MODEL_FILES = [(MODEL_FILE, 0o644), ("labels.txt", 0o644)] + [(f"samples/{p.name}", 0o644) for p in SAMPLES]


@pytest.fixture(scope="module")
def installed_model_files(host: Any) -> dict[str, dict[str, str]]:
    """Type, owner, group, mode (octal) and SHA-256 of each of MODEL_FILES on the guest, by name, read in one
    command: each attribute of testinfra's host.file is a round trip of its own, about 1.6 s on the emulated Pi
    (measured: 8-9 s a file, 70 s for the model's files)."""
    paths = {name: f"{MODEL_DIR}/{name}" for name, _ in MODEL_FILES}
    each = " ".join(["%s"] * len(paths))
    cmd = host.run(f"stat -L -c '%%n|%%F|%%U|%%G|%%a' -- {each}; sha256sum -- {each}", *paths.values(), *paths.values())
    found: dict[str, dict[str, str]] = {}
    for line in cmd.stdout.splitlines():
        if "|" in line:
            path, kind, user, group, mode = line.rsplit("|", 4)
            found.setdefault(path, {}).update(kind=kind, user=user, group=group, mode=mode)
        elif line.strip():
            digest, path = line.split(maxsplit=1)
            found.setdefault(path, {})["sha256"] = digest
    return {name: found.get(path, {"error": cmd.stderr}) for name, path in paths.items()}


@before_reboot_only
@pytest.mark.parametrize(("name", "mode"), MODEL_FILES, ids=[name for name, _ in MODEL_FILES])
def test_model_files_are_installed(installed_model_files: dict[str, dict[str, str]], name: str, mode: int) -> None:
    installed = installed_model_files[name]
    assert installed.get("kind") == "regular file", installed
    assert installed["user"] == "root"
    assert installed["group"] == "root"
    assert int(installed["mode"], 8) == mode
    assert installed.get("sha256") == hashlib.sha256((MODELS / name).read_bytes()).hexdigest(), installed


@before_reboot_only
def test_the_current_model_is_the_sources_version_and_verifies(host: Any) -> None:
    current = host.file(MODEL_DIR)
    assert current.is_symlink
    assert current.linked_to == f"{MODEL_ROOT}/versions/{MODEL_VERSION}"
    check = host.run("cd %s && sha256sum --check --strict --quiet SHA256SUMS", MODEL_DIR)
    assert check.rc == 0, check.stdout + check.stderr


@before_reboot_only
def test_guest_classifies_every_sample(guest_report: dict[str, Any], runtime: GuestRuntime) -> None:
    assert sorted(_by_image(guest_report)) == [p.name for p in SAMPLES]
    assert guest_report["runtime"] == f"{runtime.module} {runtime.version}"


@before_reboot_only
def test_guest_labels_every_sample_as_its_name_says(guest_report: dict[str, Any]) -> None:
    # samples/<label>_<n>.png
    assert {image: r["label"] for image, r in _by_image(guest_report).items()} == {
        p.name: p.stem.rsplit("_", 1)[0] for p in SAMPLES
    }


@before_reboot_only
def test_guest_labels_match_the_host(guest_report: dict[str, Any], host_report: dict[str, Any]) -> None:
    guest, reference = _by_image(guest_report), _by_image(host_report)
    assert {image: r["label"] for image, r in guest.items()} == {image: r["label"] for image, r in reference.items()}


@before_reboot_only
@pytest.mark.parametrize("image", [p.name for p in SAMPLES])
def test_guest_probabilities_match_the_host(
    guest_report: dict[str, Any], host_report: dict[str, Any], image: str
) -> None:
    guest, reference = _by_image(guest_report)[image], _by_image(host_report)[image]
    assert guest["probabilities"] == pytest.approx(reference["probabilities"], abs=TOLERANCE)
    assert guest["probability"] == pytest.approx(reference["probability"], abs=TOLERANCE)


def test_pi_user_has_no_usable_password(host: Any) -> None:
    with host.sudo():
        password = host.user("pi").password
    # "*" or "!...": no password login; "" would mean login without one.
    assert password, "pi has an empty password: anyone can log in as pi"
    assert password[0] in "*!", "pi has a usable password; the image should only allow its SSH key"


def test_sshd_is_running(host: Any) -> None:
    sshd = host.service("ssh")
    assert sshd.is_running
    assert sshd.is_enabled
