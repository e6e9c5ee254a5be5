"""The stock client side of the serving tests: ``python -m tests.serving.stock_client ADDRESS < STEPS``.

Runs each step (a JSON list on stdin) with ``tritonclient.grpc`` — its high-level client, or its own generated
stub for requests the high-level client cannot make (typed contents, malformed tensors) — and
prints one JSON list of results. It imports no millrace module: the protocol's messages come from
tritonclient alone.

Options any step may carry: ``token`` (sent as ``authorization: Bearer <token>``), ``tls`` ({"ca": PEM
path, "cert" and "key": a client certificate for mutual TLS}; default plaintext) and ``timeout`` (the
call's deadline in seconds). An ``infer`` input's value may be {"zeros": shape} (a large input without a
large step: zeros, or empty strings), ``compress`` ("gzip") sends it compressed, and ``shapes_only``
answers with the outputs' shapes alone. A ``concurrent`` step runs its ``calls`` (steps, each with an
optional ``delay`` in seconds and ``after_any``: the indexes of calls to wait for, the first to end) from
one thread and one connected client each, released together, and says when each ended."""
from __future__ import annotations

import base64
import json
import os
import signal
import sys
import threading
import time

import numpy as np
import grpc
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc

NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_,
         "BYTES": np.object_}
FIELD = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents", "INT32": "int_contents",
         "BOOL": "bool_contents", "BYTES": "bytes_contents"}
NEEDS_NO_CLIENT = frozenset({"signal", "sleep"})


def _array(value, datatype):
    if isinstance(value, dict):  # {"zeros": shape}: a large input without a large step (BYTES: empty strings)
        return np.full(value["zeros"], b"", dtype=object) if datatype == "BYTES" else \
            np.zeros(value["zeros"], dtype=NUMPY[datatype])
    if datatype == "BYTES":
        return np.array(value, dtype=object)
    return np.array(value, dtype=NUMPY[datatype])


def _out(array):
    if array.dtype == object:
        return [v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()], list(array.shape)
    return array.reshape(-1).tolist(), list(array.shape)


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


class Connection:
    """The clients of one address and one transport (plaintext, TLS, or TLS with a client certificate)."""

    def __init__(self, address: str, tls: dict | None = None):
        self.address, self.tls = address, tls
        if tls:
            self.client = triton.InferenceServerClient(address, ssl=True, root_certificates=tls.get("ca"),
                                                       private_key=tls.get("key"), certificate_chain=tls.get("cert"))
        else:
            self.client = triton.InferenceServerClient(address)
        self.shared = self.channel()
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.shared)

    def channel(self) -> grpc.Channel:
        if not self.tls:
            return grpc.insecure_channel(self.address)
        credentials = grpc.ssl_channel_credentials(root_certificates=_read(self.tls.get("ca")),
                                                   private_key=_read(self.tls.get("key")),
                                                   certificate_chain=_read(self.tls.get("cert")))
        return grpc.secure_channel(self.address, credentials)


def _headers(s: dict) -> dict | None:
    return {"authorization": f"Bearer {s['token']}"} if s.get("token") else None


def _metadata(s: dict) -> tuple:
    return tuple((_headers(s) or {}).items())


def step(client, stub, s: dict, connection: Connection | None = None):
    kind = s["do"]
    headers, timeout = _headers(s), s.get("timeout")
    try:
        if kind == "health":
            return {"live": client.is_server_live(headers=headers, client_timeout=timeout),
                    "ready": client.is_server_ready(headers=headers, client_timeout=timeout),
                    "server": client.get_server_metadata(headers=headers, as_json=True, client_timeout=timeout)}
        if kind == "ready":
            return client.is_model_ready(s["model"], s.get("version", ""), headers=headers, client_timeout=timeout)
        if kind == "metadata":
            return client.get_model_metadata(s["model"], s.get("version", ""), headers=headers, as_json=True,
                                             client_timeout=timeout)
        if kind == "infer":  # the high-level client: raw_input_contents, raw outputs
            inputs = []
            for name, (datatype, value) in s["inputs"].items():
                array = _array(value, datatype)
                tensor = triton.InferInput(name, list(array.shape), datatype)
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            outputs = [triton.InferRequestedOutput(name) for name in s["outputs"]] if "outputs" in s else None
            result = client.infer(s["model"], inputs, model_version=s.get("version", ""), outputs=outputs,
                                  headers=headers, client_timeout=timeout, compression_algorithm=s.get("compress"))
            response = result.get_response()
            if s.get("shapes_only"):  # a large answer: its outputs' shapes, not their values
                return {"shapes": {o.name: list(result.as_numpy(o.name).shape) for o in response.outputs}}
            return {"outputs": {o.name: _out(result.as_numpy(o.name)) for o in response.outputs},
                    "parameters": {k: v.string_param for k, v in response.parameters.items()},
                    "version": response.model_version}
        if kind == "infer_typed":  # typed contents both ways, through tritonclient's own stub
            request = service_pb2.ModelInferRequest(model_name=s["model"], model_version=s.get("version", ""))
            for name, (datatype, value, shape) in s["inputs"].items():
                tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
                flat = list(np.array(value, dtype=object).reshape(-1)) if datatype == "BYTES" else \
                    np.array(value).reshape(-1).tolist()
                if datatype == "BYTES":
                    flat = [str(v).encode() for v in flat]
                getattr(tensor.contents, FIELD[datatype]).extend(flat)
            for raw in s.get("raw", []):
                request.raw_input_contents.append(base64.b64decode(raw))
            response = stub.ModelInfer(request, timeout=timeout or 30, metadata=_metadata(s))
            out = {}
            for tensor in response.outputs:
                values = list(getattr(tensor.contents, FIELD[tensor.datatype]))
                out[tensor.name] = ([v.decode() for v in values] if tensor.datatype == "BYTES" else values,
                                    list(tensor.shape))
            return {"outputs": out, "raw_outputs": len(response.raw_output_contents)}
        if kind == "health_v1":
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            channel = connection.shared if connection is not None else grpc.insecure_channel(s["address"])
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=s["service"]), timeout=timeout or 10,
                metadata=_metadata(s)).status
            return health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        if kind == "reflection":
            from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

            database = ProtoReflectionDescriptorDatabase(grpc.insecure_channel(s["address"]))
            services = sorted(database.get_services())
            method = database.FindFileContainingSymbol("inference.GRPCInferenceService").service[0].method
            return {"services": services, "methods": sorted(m.name for m in method)}
        if kind == "warm":  # connect (a health check opens the shared channel; ServerLive the client's)
            step(client, stub, {**s, "do": "health_v1", "service": ""}, connection)
            return client.is_server_live(headers=headers, client_timeout=timeout)
        if kind == "signal":  # e.g. SIGTERM to the server while calls are in flight; the wall-clock time sent
            os.kill(int(s["pid"]), getattr(signal, s.get("signal", "SIGTERM")))
            return time.time()
        if kind == "sleep":
            time.sleep(s["seconds"])
            return None
        if kind == "concurrent":
            return _concurrent(s)
        raise ValueError(f"unknown step {kind}")
    except triton.InferenceServerException as exc:
        return {"error": exc.status(), "message": exc.message()}
    except grpc.RpcError as exc:
        return {"error": str(exc.code()), "message": exc.details()}


def _concurrent(s: dict) -> dict:
    """Each call in its own thread with its own connected client, all released at once; then each waits
    for the first of the calls its ``after_any`` lists (their indexes) to end, if any, and its ``delay``.
    {"answers": [...], "ended": [seconds after the release, per call]}."""
    calls = [{"address": s["address"], **c} for c in s["calls"]]
    answers: list = [None] * len(calls)
    ended: list = [None] * len(calls)
    released: list[float] = []
    gate = threading.Barrier(len(calls), action=lambda: released.append(time.monotonic()))
    finished = threading.Condition()

    def run(i: int, call: dict) -> None:
        connection = None
        try:
            if call["do"] not in NEEDS_NO_CLIENT:
                connection = Connection(call["address"], call.get("tls"))
                # connected before the gate, so that the calls reach the server together
                step(connection.client, connection.stub, {**call, "do": "warm", "timeout": 5}, connection)
        finally:
            gate.wait(timeout=60)
        try:
            if call.get("after_any"):
                with finished:
                    finished.wait_for(lambda: any(ended[j] is not None for j in call["after_any"]), timeout=120)
            time.sleep(call.get("delay", 0))
            answers[i] = step(connection and connection.client, connection and connection.stub, call, connection)
        finally:
            with finished:
                ended[i] = time.monotonic() - released[0]
                finished.notify_all()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"answers": answers, "ended": ended}


def main() -> int:
    address, steps = sys.argv[1], json.loads(sys.stdin.read())
    connections: dict[str, Connection] = {}
    results = []
    for s in steps:
        s = {**s, "address": address}
        key = json.dumps(s.get("tls"), sort_keys=True)
        if key not in connections:
            connections[key] = Connection(address, s.get("tls"))
        connection = connections[key]
        results.append(step(connection.client, connection.stub, s, connection))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
