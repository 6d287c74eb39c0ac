"""pibake's code that runs on the Raspberry Pi: one package, importable on the oldest Python a base ships (3.9).

Modules, each owning one thing:

    errors        the two failures: a model that cannot be used, a request that is refused
    runtimes      model files to interpreters, by file suffix (TFLite; onnxruntime behind TFLite's interface)
    model         the classifier: checks its tensors, runs batches, top-k, OIP metadata
    preprocess    images to the model's input (the preprocessing training used: preprocessing.json)
    predict       the predict command: images on disk to one JSON report
    timing        per-image latency of the model (what `pibake bench` measures)
    oip           the Open Inference Protocol v2 codec, with Triton's binary tensor data extension
    workqueue     the bounded queue the inference runs from (a full queue is refused at once)
    metrics       the Prometheus metrics of the service
    app           the HTTP API as an ASGI application
    server        the service: uvicorn (Debian's python3-uvicorn) serving the app, systemd notification
    cli           `python3 -m pibake_target serve|predict|time`

predict and timing need only numpy, Pillow and a runtime; the service also needs uvicorn and
prometheus_client, imported only by the modules that use them.
"""

__version__ = "2.0.0"
