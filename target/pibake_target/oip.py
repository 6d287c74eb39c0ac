"""The Open Inference Protocol v2 ("KServe v2") codec, with Triton's binary tensor data and
classification extensions: what `tritonclient[http]` sends and expects.

With the binary tensor data extension a body is the JSON object (Inference-Header-Content-Length
bytes) followed by the tensors' little-endian bytes, each input's parameters.binary_data_size long.
Everything a client can get wrong is a RequestError (400) saying what.
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING, Any

import numpy as np

from pibake_target.errors import RequestError

if TYPE_CHECKING:
    from pibake_target.model import Model
    from pibake_target.preprocess import FloatArray

EXTENSIONS = ("binary_tensor_data", "classification")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise RequestError(400, f"{what} is not valid JSON: {exc}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _flatten_numbers(data: Any, name: str) -> list[float]:
    """The numbers of a flat or nested JSON list, row-major; anything else is a RequestError."""
    if not isinstance(data, list):
        raise RequestError(400, f"input {name!r}: data must be a JSON list of numbers")
    out: list[float] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > 8:
                    raise RequestError(400, f"input {name!r}: data is nested too deeply")
                stack.append(iter(item))
                break
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise RequestError(400, f"input {name!r}: data must hold only numbers, found {type(item).__name__}")
            out.append(item)
        else:
            stack.pop()
    return out


def parse_infer_request(body: bytes, header_length: int | None, model: Model) -> tuple[dict[str, Any], FloatArray]:
    """Split and check an OIP inference request; returns (the JSON object, the input batch).

    With Triton's binary tensor data extension the body is the JSON object (header_length bytes,
    from the Inference-Header-Content-Length header) followed by the inputs' raw bytes.
    """
    if header_length is None:
        header, binary = body, b""
    else:
        if not 0 < header_length <= len(body):
            raise RequestError(
                400, f"Inference-Header-Content-Length is {header_length} but the body is {len(body)} bytes"
            )
        header, binary = body[:header_length], body[header_length:]
    what = "the inference request"
    if header_length is not None:
        what += f" (the first {header_length} bytes of the body, by Inference-Header-Content-Length)"
    request = parse_json(header, what)
    if not isinstance(request, dict):
        raise RequestError(400, "the inference request must be a JSON object")
    if "id" in request and not isinstance(request["id"], str):
        raise RequestError(400, "the request id must be a string")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
        raise RequestError(400, "the inference request needs 'inputs': a non-empty list of tensor objects")
    if len(inputs) != 1:
        raise RequestError(400, f"the model has one input, {model.input_name!r}; the request has {len(inputs)}")
    tensor = inputs[0]
    name = tensor.get("name")
    if name != model.input_name:
        raise RequestError(400, f"unknown input {name!r}: the model's input is {model.input_name!r}")
    datatype = tensor.get("datatype")
    if datatype != "FP32":
        raise RequestError(400, f"input {name!r} has datatype {datatype!r}; the model takes FP32")
    shape = tensor.get("shape")
    expected = [model.height, model.width, 3]
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(_is_int(d) for d in shape)
        or shape[1:] != expected
        or not 1 <= shape[0] <= model.max_batch_size
    ):
        raise RequestError(
            400,
            f"input {name!r} has shape {json.dumps(shape)}; the model takes [N, {model.height}, {model.width}, 3] "
            f"with N from 1 to {model.max_batch_size}",
        )
    count = shape[0] * model.height * model.width * 3
    parameters = tensor.get("parameters", {})
    if not isinstance(parameters, dict):
        raise RequestError(400, f"input {name!r}: parameters must be a JSON object")
    if any(key.startswith("shared_memory") for key in parameters):
        raise RequestError(400, "shared memory inputs are not supported: send the data in the request")
    size = parameters.get("binary_data_size")
    if size is not None:
        if not _is_int(size) or size < 0:
            raise RequestError(400, f"input {name!r}: binary_data_size must be a non-negative integer")
        if "data" in tensor:
            raise RequestError(400, f"input {name!r} has both data and binary_data_size")
        if size != len(binary):
            raise RequestError(
                400,
                f"input {name!r} declares {size} bytes of binary data but {len(binary)} bytes follow "
                "the JSON header (Inference-Header-Content-Length)",
            )
        if size != count * 4:
            raise RequestError(400, f"input {name!r}: FP32 {json.dumps(shape)} is {count * 4} bytes, not {size}")
        values = np.frombuffer(binary, dtype="<f4", count=count).astype(np.float32)
    else:
        if binary:
            raise RequestError(400, f"{len(binary)} bytes follow the JSON header but no input has binary_data_size")
        if "data" not in tensor:
            raise RequestError(400, f"input {name!r} has neither data nor parameters.binary_data_size")
        numbers = _flatten_numbers(tensor["data"], name)
        if len(numbers) != count:
            raise RequestError(
                400, f"input {name!r}: shape {json.dumps(shape)} needs {count} numbers, got {len(numbers)}"
            )
        values = np.array(numbers, dtype=np.float32)
    if not np.all(np.isfinite(values)):
        raise RequestError(400, f"input {name!r} holds NaN or infinite values")
    return request, values.reshape(shape)


def requested_outputs(request: dict[str, Any], model: Model) -> list[tuple[str, bool, int]]:
    """(output name, as binary data, classification count or 0) for each output to return."""
    parameters = request.get("parameters", {})
    if not isinstance(parameters, dict):
        raise RequestError(400, "the request's parameters must be a JSON object")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise RequestError(400, "binary_data_output must be true or false")
    outputs = request.get("outputs")
    if outputs is None:
        return [(model.output_name, binary_default, 0)]
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise RequestError(400, "'outputs' must be a list of objects")
    result: list[tuple[str, bool, int]] = []
    for output in outputs:
        name = output.get("name")
        if name != model.output_name:
            raise RequestError(400, f"unknown output {name!r}: the model's output is {model.output_name!r}")
        if any(entry[0] == name for entry in result):
            raise RequestError(400, f"output {name!r} is requested twice")
        params = output.get("parameters", {})
        if not isinstance(params, dict):
            raise RequestError(400, f"output {name!r}: parameters must be a JSON object")
        if any(key.startswith("shared_memory") for key in params):
            raise RequestError(400, "shared memory outputs are not supported")
        binary = params.get("binary_data", binary_default)
        classes = params.get("classification", 0)
        if not isinstance(binary, bool):
            raise RequestError(400, f"output {name!r}: binary_data must be true or false")
        if not _is_int(classes) or classes < 0:
            raise RequestError(400, f"output {name!r}: classification must be a non-negative integer")
        result.append((name, binary, classes))
    return result


def encode_infer_response(
    request: dict[str, Any], probabilities: FloatArray, outputs: list[tuple[str, bool, int]], model: Model
) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON header when binary tensors follow it."""
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    batch = int(probabilities.shape[0])
    for name, binary, classes in outputs:
        tensor: dict[str, Any] = {"name": name}
        if classes:
            # Triton's classification extension: "<value>:<index>:<label>" strings, best first.
            k = min(classes, model.num_classes)
            strings = [
                f"{value:f}:{index}:{model.labels[index]}"
                for row in probabilities
                for index, value in model.top_k(row, k)
            ]
            tensor.update(datatype="BYTES", shape=[batch, k])
            if binary:
                encoded = [s.encode("utf-8") for s in strings]
                blob = b"".join(struct.pack("<I", len(e)) + e for e in encoded)
            else:
                tensor["data"] = strings
        else:
            tensor.update(datatype="FP32", shape=[batch, model.num_classes])
            if binary:
                blob = probabilities.astype("<f4").tobytes()
            else:
                tensor["data"] = [float(v) for v in probabilities.reshape(-1)]
        if binary:
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": tensors}
    if "id" in request:
        response["id"] = request["id"]
    header = json.dumps(response, allow_nan=False).encode("utf-8")
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
