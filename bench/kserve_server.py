"""One ONNX model behind KServe's Python model server, the peer of bench/serving.py.

    /work/venvs/kserve/bin/python bench/kserve_server.py --onnx FILE --sha256 HEX \\
        --model_name will_like --grpc_port 8081 --http_port 8080

Runs in a virtual environment of its own (kserve and tritonclient cannot share a process: both
register the protobuf messages of package ``inference``); bench/serving.py says how to make it.
It imports nothing of millrace.

The model is a stock ``kserve.Model``: ``load()`` makes an onnxruntime CPU session with the
options millrace's server uses (``millrace.indexing.embed.session`` with its default threads:
onnxruntime's own thread settings, warnings off), ``predict()`` takes the v2 ``InferRequest`` and
returns an ``InferResponse`` of every model output, raw when the request was raw (as millrace
answers). The server is ``kserve.ModelServer`` with its own defaults, as a default deployment
runs it: 1 worker process, ``max_threads`` 4 for the gRPC server, asyncio executor of
min(32, cpus + 4), request latency logging on; the v2 gRPC service on ``--grpc_port``, its REST
server on ``--http_port``. KServe's own flags (``--workers``, ``--max_threads``, ...) pass through.
"""
from __future__ import annotations

import argparse
import hashlib
import sys

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

# onnxruntime element type -> v2 protocol datatype, for the outputs
DATATYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64", "tensor(int32)": "INT32",
             "tensor(bool)": "BOOL", "tensor(string)": "BYTES"}


class OnnxModel(Model):
    def __init__(self, name: str, path: str, sha256: str):
        super().__init__(name)
        self.path, self.sha256 = path, sha256
        self.session = None
        self.load()

    def load(self) -> bool:
        with open(self.path, "rb") as f:
            data = f.read()
        if self.sha256 and hashlib.sha256(data).hexdigest() != self.sha256:
            raise SystemExit(f"error: {self.path}: SHA-256 does not match the bundle's manifest "
                             "(fix: point --onnx at the release's file)")
        options = ort.SessionOptions()  # as millrace.indexing.embed.session(data, threads=0)
        options.log_severity_level = 3
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.outputs = [(o.name, DATATYPES[o.type]) for o in self.session.get_outputs()]
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
        feed = {}
        for tensor in payload.inputs:
            array = tensor.as_numpy()
            if tensor.datatype == "BYTES":
                # KServe hands BYTES elements over as bytes; onnxruntime reads a bytes object as its
                # repr ("b'Drama'"), so string inputs must be text, as millrace's server decodes them.
                array = np.array([v.decode("utf-8") for v in array.reshape(-1)], dtype=object).reshape(array.shape)
            feed[tensor.name] = array
        wanted = [o.name for o in payload.request_outputs] if payload.request_outputs else [n for n, _ in self.outputs]
        kinds = dict(self.outputs)
        results = self.session.run(wanted, feed)
        outputs = []
        for name, array in zip(wanted, results):
            output = InferOutput(name=name, shape=list(array.shape), datatype=kinds[name])
            output.set_data_from_numpy(array, binary_data=payload.use_binary_outputs)
            outputs.append(output)
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=outputs,
                             use_binary_outputs=payload.use_binary_outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", required=True, help="The .onnx file to serve.")
    parser.add_argument("--sha256", default="", help="Its SHA-256 (from the bundle's manifest.json); checked at load.")
    parser.add_argument("--model_name", default="model", help="The name it serves under (KServe's own flag).")
    # The rest (--grpc_port, --http_port, --workers, ...) are KServe's: it parsed sys.argv when imported.
    args, _ = parser.parse_known_args()
    model = OnnxModel(args.model_name, args.onnx, args.sha256)
    print(f"kserve model {model.name} loaded from {args.onnx}", file=sys.stderr, flush=True)
    ModelServer().start([model])


if __name__ == "__main__":
    main()
