"""A stock-client load loop: ``python -m tests.serving.load_client ADDRESS MODEL STOP_FILE THREADS INPUTS_FILE``.

Each thread calls ModelInfer (tritonclient.grpc) on MODEL with the inputs of INPUTS_FILE (a JSON object: name ->
[datatype, nested values]) back to back until STOP_FILE exists, then one JSON object is printed:
every answer's release id, model version and outputs in call order per thread, and every error.
Like stock_client.py it imports no millrace module."""
from __future__ import annotations

import json
import os
import sys
import threading

import numpy as np
import tritonclient.grpc as triton

NUMPY = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32, "BYTES": np.object_}


def main() -> int:
    address, model, stop_file, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with open(sys.argv[5]) as f:
        spec = json.load(f)
    answers: list[list] = [[] for _ in range(threads)]
    errors: list[str] = []

    def loop(slot: int) -> None:
        client = triton.InferenceServerClient(address)
        while not os.path.exists(stop_file):
            inputs = []
            for name, (datatype, value) in spec.items():
                array = np.array(value, dtype=NUMPY[datatype])
                tensor = triton.InferInput(name, list(array.shape), datatype)
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            try:
                result = client.infer(model, inputs, client_timeout=30)
            except triton.InferenceServerException as exc:
                errors.append(f"{exc.status()}: {exc.message()}")
                continue
            response = result.get_response()
            answers[slot].append({"release": response.parameters["release"].string_param,
                                  "version": response.model_version,
                                  "outputs": {o.name: result.as_numpy(o.name).reshape(-1).tolist()
                                              for o in response.outputs}})

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps({"answers": answers, "errors": errors}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
