"""What `molecule verify` checks on the emulated Pi after site.yml has run.

The pinned TFLite runtime is installed and imports, the model gives the same answers on
the guest (armhf, tflite-runtime 2.11, numpy 1.19) as on the controller (the reference run),
and the image's security basics hold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from verify_helpers import before_reboot_only

REPO = Path(__file__).resolve().parents[3]
MODELS = REPO / "models"
# Float32 inference on two CPUs and two TFLite builds: equal to well within this.
TOLERANCE = 1e-5


def _role_defaults(role: str) -> dict[str, Any]:
    data = yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text())
    assert isinstance(data, dict)
    return data


RUNTIME = _role_defaults("python_runtime")
MODEL = _role_defaults("model")
RUNTIME_VERSION: str = RUNTIME["python_runtime_version"]
WHEEL_PATH = f"{RUNTIME['python_runtime_target_wheel_dir']}/" + (
    f"tflite_runtime-{RUNTIME_VERSION}-{RUNTIME['python_runtime_python_tag']}-"
    f"{RUNTIME['python_runtime_python_tag']}-{RUNTIME['python_runtime_platform_tag']}.whl"
)
MODEL_ROOT: str = MODEL["model_root"]
MODEL_DIR = f"{MODEL_ROOT}/current"
MODEL_FILE: str = MODEL["model_file"]
MODEL_VERSION = (MODELS / "VERSION").read_text().split()[0]
SAMPLES = sorted(MODELS.glob("samples/*.png"))
PACKAGE_DIR: str = RUNTIME["python_runtime_package_dir"]


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
def guest_report(host: Any) -> dict[str, Any]:
    """The model run on the guest by the installed package's predict command over the same samples."""
    images = [f"{MODEL_DIR}/samples/{p.name}" for p in SAMPLES]
    cmd = host.run(
        "PYTHONPATH=%s python3 -B -m pibake_target predict --model %s --labels %s" + " %s" * len(images),
        PACKAGE_DIR,
        f"{MODEL_DIR}/{MODEL_FILE}",
        f"{MODEL_DIR}/labels.txt",
        *images,
    )
    assert cmd.rc == 0, f"the predict command failed on the guest (rc {cmd.rc}):\n{cmd.stderr}"
    # One JSON line; anything a runtime chatters before it is not ours.
    report: dict[str, Any] = json.loads(cmd.stdout.strip().splitlines()[-1])
    return report


def test_runtime_wheel_is_installed_at_the_pinned_version(host: Any) -> None:
    # From the installed distribution's metadata: testinfra's host.pip runs pip, 88 s on the emulated Pi.
    version = host.run("python3 -I -c 'import importlib.metadata as m; print(m.version(\"tflite-runtime\"))'")
    assert version.rc == 0, version.stderr
    assert version.stdout.strip() == RUNTIME_VERSION


def test_runtime_wheel_on_the_guest_is_the_pinned_one(host: Any) -> None:
    wheel = host.file(WHEEL_PATH)
    assert wheel.is_file
    assert wheel.sha256sum == RUNTIME["python_runtime_wheel_sha256"]


def test_runtime_imports_with_the_system_python(host: Any) -> None:
    cmd = host.run("python3 -c 'import tflite_runtime, tflite_runtime.interpreter; print(tflite_runtime.__version__)'")
    assert cmd.rc == 0, cmd.stderr
    assert cmd.stdout.strip() == RUNTIME_VERSION


MODEL_FILES = [(MODEL_FILE, 0o644), ("labels.txt", 0o644)] + [(f"samples/{p.name}", 0o644) for p in SAMPLES]


@pytest.mark.parametrize(("name", "mode"), MODEL_FILES, ids=[name for name, _ in MODEL_FILES])
def test_model_files_are_installed(host: Any, name: str, mode: int) -> None:
    installed = host.file(f"{MODEL_DIR}/{name}")
    assert installed.is_file
    assert installed.user == "root"
    assert installed.group == "root"
    assert installed.mode == mode
    assert installed.sha256sum == hashlib.sha256((MODELS / name).read_bytes()).hexdigest()


def test_the_current_model_is_the_sources_version_and_verifies(host: Any) -> None:
    current = host.file(MODEL_DIR)
    assert current.is_symlink
    assert current.linked_to == f"{MODEL_ROOT}/versions/{MODEL_VERSION}"
    check = host.run("cd %s && sha256sum --check --strict --quiet SHA256SUMS", MODEL_DIR)
    assert check.rc == 0, check.stdout + check.stderr


@before_reboot_only
def test_guest_classifies_every_sample(guest_report: dict[str, Any]) -> None:
    assert sorted(_by_image(guest_report)) == [p.name for p in SAMPLES]
    assert guest_report["runtime"].startswith("tflite_runtime ")


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
