"""The gRPC server: ``inference.GRPCInferenceService`` of the Open Inference Protocol over the
models of one release, plus ``grpc.health.v1`` and server reflection.

The service is registered by its wire name with a generic handler over the generated messages
(``proto/inference_pb2.py``); no stub code is generated. Every error a handler raises goes through
``_handled``, the one place a ``ServingError`` becomes its gRPC status code; anything else is
INTERNAL with a one-line message, logged with its traceback.
"""
from __future__ import annotations

import logging
from concurrent import futures

import grpc

from millrace.serving.errors import InvalidInput, ServingError
from millrace.serving.proto import inference_pb2 as pb
from millrace.serving.repository import PLATFORM, Repository
from millrace.serving.tensors import decode, encode

SERVICE = "inference.GRPCInferenceService"
NAME = "millrace"
MAX_MESSAGE_BYTES = 4 << 20  # gRPC's own default, stated so that it is one setting
log = logging.getLogger("millrace.serving")


class InferenceService:
    def __init__(self, repository: Repository, version: str):
        self.repository, self.version = repository, version

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=bool(self.repository.models))

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=NAME, version=self.version, extensions=[])

    def ModelReady(self, request, context):
        try:
            self.repository.get(request.name, request.version)
        except ServingError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    def ModelMetadata(self, request, context):
        model = self.repository.get(request.name, request.version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=model.name, versions=[model.version], platform=PLATFORM,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in model.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in model.outputs])

    def ModelInfer(self, request, context):
        model = self.repository.get(request.model_name, request.model_version)
        specs = {t.name: t for t in model.inputs}
        raw = list(request.raw_input_contents)
        if raw and len(raw) != len(request.inputs):
            raise InvalidInput(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs (one each, in order)")
        feed = {}
        for i, tensor in enumerate(request.inputs):
            if tensor.name not in specs:
                raise InvalidInput(f"model '{model.name}' has no input '{tensor.name}' (it takes {sorted(specs)})")
            if tensor.name in feed:
                raise InvalidInput(f"input '{tensor.name}' is given twice")
            feed[tensor.name] = decode(tensor, raw[i] if raw else None, specs[tensor.name])
        missing = sorted(set(specs) - set(feed))
        if missing:
            raise InvalidInput(f"model '{model.name}' needs inputs {missing}")
        outputs = model.infer(feed, [o.name for o in request.outputs])
        kinds = {t.name: t.datatype for t in model.outputs}
        response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
        response.parameters["release"].string_param = self.repository.release.id
        for name, array in outputs.items():
            data = encode(response.outputs.add(name=name), array, kinds[name], raw=bool(raw))
            if data is not None:
                response.raw_output_contents.append(data)
        return response


def _handled(method):
    def handler(request, context):
        try:
            return method(request, context)
        except ServingError as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        except Exception as exc:  # a bug, not the caller's fault: say so in one line, keep the traceback in the log
            log.exception("unexpected error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
    return handler


def _generic_handler(service: InferenceService) -> grpc.GenericRpcHandler:
    rpcs = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        request = getattr(pb, method.input_type.name)
        response = getattr(pb, method.output_type.name)
        rpcs[method.name] = grpc.unary_unary_rpc_method_handler(
            _handled(getattr(service, method.name)), request_deserializer=request.FromString,
            response_serializer=response.SerializeToString)
    return grpc.method_handlers_generic_handler(SERVICE, rpcs)


def build_server(repository: Repository, version: str, host: str, port: int, workers: int = 8,
                 max_message_bytes: int = MAX_MESSAGE_BYTES) -> tuple[grpc.Server, int, object]:
    """The server, the port it bound (``port`` 0: any free one) and its health servicer."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.max_receive_message_length", max_message_bytes),
                                  ("grpc.max_send_message_length", max_message_bytes)])
    server.add_generic_rpc_handlers((_generic_handler(InferenceService(repository, version)),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise ServingError(f"cannot listen on {host}:{port} (is another server using it?)")
    return server, bound, health_servicer
