"""The Pi-side package's onnxruntime loader: an InferenceSession behind the TFLite interface model.Model uses.

The stand-in session tests run anywhere; the rest load real ONNX models (tests/onnx_models.py writes them as
protobuf bytes) with onnxruntime, the host's from the test extra, the release the Pi's lock pins.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from pibake_target import runtimes
from pibake_target.errors import ModelError
from pibake_target.model import load_model

from pibake import resources
from pibake._module_utils import wheel_lock
from tests import onnx_models
from tests.conftest import REPO

ONNX_LOCK = "onnxruntime-3.13-debian-trixie-arm64.txt"


def _arg(name: str, shape: list[Any], type_: str = "tensor(float)") -> SimpleNamespace:
    """An onnxruntime NodeArg's fields: name, shape (int, str dim_param, or None), type."""
    return SimpleNamespace(name=name, shape=shape, type=type_)


class _Session:
    """A stand-in InferenceSession: one input, one output, run() doubles the input and records its calls."""

    def __init__(self, inputs: list[SimpleNamespace], outputs: list[SimpleNamespace]) -> None:
        self.inputs, self.outputs, self.runs = inputs, outputs, list[tuple[list[str], dict[str, Any]]]()

    def get_inputs(self) -> list[SimpleNamespace]:
        return self.inputs

    def get_outputs(self) -> list[SimpleNamespace]:
        return self.outputs

    def run(self, names: list[str], feed: dict[str, Any]) -> list[Any]:
        self.runs.append((names, feed))
        return [next(iter(feed.values())).reshape(1, -1)[:, :2] * 2]


def test_the_adapter_gives_tflite_details_with_the_batch_dimension_as_1() -> None:
    session = _Session([_arg("pixels", ["N", 4, 4, 3])], [_arg("scores", [None, 2])])
    adapter = runtimes.OnnxSession(session)
    (inp,) = adapter.get_input_details()
    (out,) = adapter.get_output_details()
    assert (inp["name"], inp["index"], inp["dtype"]) == ("pixels", 0, np.float32)
    assert inp["shape"].tolist() == [1, 4, 4, 3] and inp["shape_signature"].tolist() == [-1, 4, 4, 3]
    assert (out["name"], out["index"], out["shape"].tolist()) == ("scores", 1, [1, 2])  # after the inputs, as TFLite
    adapter.get_input_details()[0]["name"] = "changed"
    assert adapter.get_input_details()[0]["name"] == "pixels"  # each call's details are the caller's own

    value = np.arange(48, dtype=np.float32).reshape(1, 4, 4, 3)
    adapter.allocate_tensors()
    adapter.set_tensor(0, value)
    value[...] = -1  # set_tensor copies, as TFLite's does
    adapter.invoke()
    ((names, feed),) = session.runs
    assert names == ["scores"] and list(feed) == ["pixels"] and feed["pixels"][0, 0, 0, 1] == 1.0
    assert adapter.get_tensor(1).tolist() == [[0.0, 2.0]]


@pytest.mark.parametrize(
    ("index", "value", "says"),
    [
        (1, np.zeros((1, 2, 3), np.float32), "tensor 1 is not an input of the model"),
        (0, np.zeros((1, 2, 3), np.float64), "got a value of type float64, expected float32"),
        (0, np.zeros((2, 2, 3), np.float32), "got a value of shape [2, 2, 3], expected [1, 2, 3]"),
    ],
)
def test_set_tensor_refuses_what_tflite_refuses(index: int, value: Any, says: str) -> None:
    adapter = runtimes.OnnxSession(_Session([_arg("x", ["batch", 2, 3])], [_arg("y", [1, 2])]))
    with pytest.raises(ValueError, match=r"cannot set tensor|is not an input") as refused:
        adapter.set_tensor(index, value)
    assert says in str(refused.value)


def test_invoke_and_get_tensor_fail_as_tflites_do() -> None:
    class Failing(_Session):
        def run(self, names: list[str], feed: dict[str, Any]) -> list[Any]:
            raise type("Fail", (Exception,), {})("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code")

    adapter = runtimes.OnnxSession(Failing([_arg("x", [1, 2])], [_arg("y", [1, 2])]))
    with pytest.raises(ValueError, match="tensor 1 has no value"):
        adapter.get_tensor(1)
    with pytest.raises(ValueError, match="no value set for the model's input x"):
        adapter.invoke()
    adapter.set_tensor(0, np.zeros((1, 2), np.float32))
    # onnxruntime's own errors derive from Exception only: the adapter gives the RuntimeError callers catch.
    with pytest.raises(RuntimeError, match="FAIL : Non-zero status code"):
        adapter.invoke()


@pytest.mark.parametrize(
    ("shape", "type_", "says"),
    [
        (["N", "H", None, 3], "tensor(float)", "has shape ['N', 'H', None, 3]: dynamic axis 1 ('H'), axis 2 (unnamed)"),
        ([1, 3], "tensor(string)", "is a tensor(string)"),
        ([1, 3], "tensor(bfloat16)", "is a tensor(bfloat16)"),
    ],
)
def test_what_cannot_be_fed_is_refused_naming_the_tensor(shape: list[Any], type_: str, says: str) -> None:
    with pytest.raises(ModelError) as refused:
        runtimes.OnnxSession(_Session([_arg("pixels", shape, type_)], [_arg("y", [1, 2])]))
    assert "the model's input 'pixels' " in str(refused.value) and says in str(refused.value)
    with pytest.raises(ModelError, match=r"the model's output 'y' has shape \[1, 'classes'\]: dynamic axis 1"):
        runtimes.OnnxSession(_Session([_arg("x", [1, 2])], [_arg("y", [1, "classes"])]))


def test_details_give_numpy_scalar_types_that_zeros_and_the_model_check_take() -> None:
    """invoke_once makes np.zeros(shape, dtype) of each input; model.Model compares np.dtype(dtype) to float32."""
    for onnx_type, numpy_name in runtimes.ONNX_DTYPES.items():
        (detail,) = runtimes.OnnxSession(_Session([_arg("x", ["N", 2], onnx_type)], [])).get_input_details()
        assert isinstance(detail["dtype"], type) and issubclass(detail["dtype"], np.generic), onnx_type
        assert np.zeros(detail["shape"], dtype=detail["dtype"]).dtype.name == numpy_name
    assert runtimes.ONNX_DTYPES["tensor(float)"] == "float32" and runtimes.ONNX_DTYPES["tensor(double)"] == "float64"


def test_a_missing_onnxruntime_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.import_module

    def no_onnxruntime(name: str) -> Any:
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real(name)

    monkeypatch.setattr(importlib, "import_module", no_onnxruntime)
    with pytest.raises(ModelError, match=r"no ONNX runtime found \(install onnxruntime"):
        runtimes.load_interpreter(str(tmp_path / "m.onnx"))


# ---------------------------------------------------------------- with onnxruntime


@pytest.fixture
def ort() -> Any:
    return pytest.importorskip("onnxruntime", reason="onnxruntime is in the test extra: pip install -e '.[test]'")


@pytest.fixture
def classifier(tmp_path: Path) -> Path:
    """A 24x24 RGB, 4-class ONNX classifier (batch dimension "N") in tmp_path."""
    path = tmp_path / "tiny.onnx"
    path.write_bytes(onnx_models.classifier(24, 24, 4))
    return path


def test_a_real_session_runs_the_model_as_numpy_computes_it(ort: Any, classifier: Path) -> None:
    interpreter, runtime = runtimes.load_interpreter(str(classifier), 2)
    assert runtime == f"onnxruntime {ort.__version__}"
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    assert (inp["name"], inp["shape"].tolist(), out["name"], out["shape"].tolist()) == (
        "pixels", [1, 24, 24, 3], "probabilities", [1, 4]
    )  # fmt: skip
    batch = np.random.default_rng(3).random((1, 24, 24, 3), dtype=np.float32)
    interpreter.set_tensor(inp["index"], batch)
    interpreter.invoke()
    got = interpreter.get_tensor(out["index"])
    np.testing.assert_allclose(got, onnx_models.classifier_outputs(batch, 4), atol=1e-6)
    assert abs(float(got.sum()) - 1.0) < 1e-5


def test_the_session_uses_the_threads_asked_for_and_the_cpu_provider(
    ort: Any, classifier: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[tuple[int, list[str]]] = []
    real = ort.InferenceSession

    def spy(path: str, sess_options: Any, providers: list[str]) -> Any:
        made.append((sess_options.intra_op_num_threads, providers))
        return real(path, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    monkeypatch.setattr(runtimes, "usable_cpus", lambda: 3)
    runtimes.load_interpreter(str(classifier), 2)
    runtimes.load_interpreter(str(classifier))
    # Never 0, onnxruntime's own default, which pins threads to cores (refused by the service's seccomp filter).
    assert made == [(2, ["CPUExecutionProvider"]), (3, ["CPUExecutionProvider"])]


def test_invoke_once_runs_an_onnx_model(ort: Any, classifier: Path, tmp_path: Path) -> None:
    assert runtimes.invoke_once(str(classifier)) == f"onnxruntime {ort.__version__}"
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(classifier.read_bytes()[:200])
    with pytest.raises(ModelError, match=rf"cannot load the model {broken}: .*INVALID_PROTOBUF"):
        runtimes.invoke_once(str(broken))
    dynamic = tmp_path / "dynamic.onnx"
    dynamic.write_bytes(onnx_models.classifier(24, 24, 4, input_dims=["N", "height", 24, 3]))
    with pytest.raises(ModelError, match=r"dynamic axis 1 \('height'\)"):
        runtimes.invoke_once(str(dynamic))


def test_the_model_serves_an_onnx_classifier(ort: Any, classifier: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\n")
    model = load_model(str(classifier), str(labels), max_batch_size=4, num_threads=1)
    assert (model.height, model.width, model.num_classes, model.platform) == (24, 24, 4, "onnxruntime_onnx")
    assert model.runtime == f"onnxruntime {ort.__version__}"
    meta = model.metadata()
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 24, 24, 3]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]}]
    batch = np.random.default_rng(5).random((3, 24, 24, 3), dtype=np.float32)
    np.testing.assert_allclose(model.run(batch), onnx_models.classifier_outputs(batch, 4), atol=1e-6)
    labels.write_text("a\nb\nc\n")
    with pytest.raises(ModelError, match="the model has 4 classes but the labels file has 3 labels"):
        load_model(str(classifier), str(labels))


# The same classifier in Keras (Flatten, Dense softmax, the ONNX model's weights), converted to TFLite, run by the
# host's TFLite interpreter: in a child, as tests/unit/test_convert.py does (TensorFlow stays out of this process).
_TFLITE_TWIN = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    weights, bias = (np.asarray(a, dtype=np.float32) for a in json.loads(open(sys.argv[1]).read()))
    keras = tf.keras
    model = keras.Sequential([
        keras.layers.Input(shape=(24, 24, 3)),
        keras.layers.Flatten(),
        keras.layers.Dense(4, activation="softmax"),
    ])
    model.layers[-1].set_weights([weights, bias])
    open(sys.argv[2], "wb").write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    """
)


def test_the_onnx_model_answers_as_its_tflite_twin(ort: Any, classifier: Path, tmp_path: Path) -> None:
    """What the Pi-side package makes of the same network in either format agrees, through the same interface."""
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow converts the twin: the convert extra (pip install -e '.[convert]')")
    if importlib.util.find_spec("tflite_runtime") is None:
        pytest.skip("tflite-runtime runs the twin: the test extra")
    weights, bias = onnx_models.classifier_weights(24, 24, 4)
    (tmp_path / "w.json").write_text(json.dumps([weights.tolist(), bias.tolist()]))
    twin = tmp_path / "twin.tflite"
    subprocess.run(
        [sys.executable, "-c", _TFLITE_TWIN, str(tmp_path / "w.json"), str(twin)],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        check=True,
        capture_output=True,
        timeout=300,
    )
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\n")
    batch = np.random.default_rng(11).random((4, 24, 24, 3), dtype=np.float32)
    onnx_model = load_model(str(classifier), str(labels))
    tflite_model = load_model(str(twin), str(labels))
    assert tflite_model.platform == "tensorflow_tflite" and onnx_model.platform == "onnxruntime_onnx"
    np.testing.assert_allclose(onnx_model.run(batch), tflite_model.run(batch), atol=1e-6)


# ---------------------------------------------------------------- the host's onnxruntime and the Pi's


def test_the_host_reference_runs_the_onnxruntime_release_the_pis_lock_pins() -> None:
    """The test extra's onnxruntime (the host's reference run) is the lock's: the same release on both sides."""
    pins = {p.key: p.version for p in wheel_lock.read(resources.LOCK_DIR / ONNX_LOCK).pins}
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    (requirement,) = [r for r in extra if r.split("=")[0].split(";")[0].strip() == "onnxruntime"]
    assert requirement == f"onnxruntime=={pins['onnxruntime']}"
    assert "numpy" not in pins  # the Pi's venv uses Debian's python3-numpy
