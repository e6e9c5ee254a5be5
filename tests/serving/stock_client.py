"""The stock client side of the serving tests: ``python -m tests.serving.stock_client ADDRESS < STEPS``.

Runs each step (a JSON list on stdin) with ``tritonclient.grpc`` — its high-level client, or its own generated
stub for requests the high-level client cannot make (typed contents, malformed tensors) — and
prints one JSON list of results. It imports no millrace module: the protocol's messages come from
tritonclient alone."""
from __future__ import annotations

import base64
import json
import sys

import numpy as np
import grpc
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc

NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_,
         "BYTES": np.object_}
FIELD = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents", "INT32": "int_contents",
         "BOOL": "bool_contents", "BYTES": "bytes_contents"}


def _array(value, datatype):
    if datatype == "BYTES":
        return np.array(value, dtype=object)
    return np.array(value, dtype=NUMPY[datatype])


def _out(array):
    if array.dtype == object:
        return [v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()], list(array.shape)
    return array.reshape(-1).tolist(), list(array.shape)


def step(client, stub, s: dict):
    kind = s["do"]
    try:
        if kind == "health":
            return {"live": client.is_server_live(), "ready": client.is_server_ready(),
                    "server": client.get_server_metadata(as_json=True)}
        if kind == "ready":
            return client.is_model_ready(s["model"], s.get("version", ""))
        if kind == "metadata":
            return client.get_model_metadata(s["model"], s.get("version", ""), as_json=True)
        if kind == "infer":  # the high-level client: raw_input_contents, raw outputs
            inputs = []
            for name, (datatype, value) in s["inputs"].items():
                array = _array(value, datatype)
                tensor = triton.InferInput(name, list(array.shape), datatype)
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            result = client.infer(s["model"], inputs, model_version=s.get("version", ""))
            response = result.get_response()
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
            response = stub.ModelInfer(request, timeout=30)
            out = {}
            for tensor in response.outputs:
                values = list(getattr(tensor.contents, FIELD[tensor.datatype]))
                out[tensor.name] = ([v.decode() for v in values] if tensor.datatype == "BYTES" else values,
                                    list(tensor.shape))
            return {"outputs": out, "raw_outputs": len(response.raw_output_contents)}
        if kind == "health_v1":
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            channel = grpc.insecure_channel(s["address"])
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=s["service"]),
                                                               timeout=10).status
            return health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        if kind == "reflection":
            from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

            database = ProtoReflectionDescriptorDatabase(grpc.insecure_channel(s["address"]))
            services = sorted(database.get_services())
            method = database.FindFileContainingSymbol("inference.GRPCInferenceService").service[0].method
            return {"services": services, "methods": sorted(m.name for m in method)}
        raise ValueError(f"unknown step {kind}")
    except triton.InferenceServerException as exc:
        return {"error": exc.status(), "message": exc.message()}
    except grpc.RpcError as exc:
        return {"error": str(exc.code()), "message": exc.details()}


def main() -> int:
    address, steps = sys.argv[1], json.loads(sys.stdin.read())
    client = triton.InferenceServerClient(address)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
    print(json.dumps([step(client, stub, {**s, "address": address}) for s in steps]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
