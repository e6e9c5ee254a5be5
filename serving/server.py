"""The gRPC server: ``inference.GRPCInferenceService`` of the Open Inference Protocol over the
models of the live release, plus ``grpc.health.v1`` and server reflection.

The service is registered by its wire name with a generic handler over the generated messages
(``proto/inference_pb2.py``); no stub code is generated. One interceptor (``Observed``) wraps
every method: it gives the call its request id, maps a ``ServingError`` to its gRPC status code
(anything else is INTERNAL with a one-line message, logged with its traceback), and counts and
times it. Bearer-token auth (``security.BearerAuth``) runs before it when configured.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent import futures

import grpc

from millrace.serving.errors import InvalidInput, NotReady, ServingError
from millrace.serving.logs import new_request_id, request_id
from millrace.serving.proto import inference_pb2 as pb
from millrace.serving.repository import PLATFORM, Repository
from millrace.serving.tensors import decode, encode

SERVICE = "inference.GRPCInferenceService"
NAME = "millrace"
MAX_MESSAGE_BYTES = 4 << 20  # gRPC's own default, stated so that it is one setting
NO_DEADLINE_S = 86_400.0  # a remaining time longer than a day: the client set no deadline
log = logging.getLogger("millrace.serving")


class Live:
    """The release being served. A request holds the repository it started on until it is answered,
    so a swap never changes a release under a request; the replaced repository closes (its batchers
    stop) when its last request is answered."""

    def __init__(self, repository: Repository | None = None):
        self._lock = threading.Lock()
        self._current = repository
        self._users: dict[int, int] = {}
        self._retiring: dict[int, Repository] = {}
        self.draining = False  # after SIGTERM: not ready (health NOT_SERVING); requests still answered

    @property
    def current(self) -> Repository | None:
        return self._current

    def acquire(self) -> Repository:
        with self._lock:
            if self._current is None:
                raise NotReady("no release is loaded yet")
            repository = self._current
            self._users[id(repository)] = self._users.get(id(repository), 0) + 1
            return repository

    def release(self, repository: Repository) -> None:
        with self._lock:
            left = self._users[id(repository)] = self._users[id(repository)] - 1
            retired = self._retiring.pop(id(repository), None) if left == 0 else None
        if retired is not None:
            retired.close()

    def swap(self, repository: Repository) -> Repository | None:
        with self._lock:
            old, self._current = self._current, repository
            idle = old is not None and self._users.get(id(old), 0) == 0
            if old is not None and not idle:
                self._retiring[id(old)] = old
        if idle:
            old.close()
        return old

    def in_flight(self) -> int:
        with self._lock:
            return sum(self._users.values())


class InferenceService:
    def __init__(self, live: Live, version: str):
        self.live, self.version = live, version

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.live.current is not None and not self.live.draining)

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=NAME, version=self.version, extensions=[])

    def ModelReady(self, request, context):
        try:
            with _using(self.live) as repository:
                repository.get(request.name, request.version)
        except ServingError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    def ModelMetadata(self, request, context):
        with _using(self.live) as repository:
            model = repository.get(request.name, request.version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=model.name, versions=[model.version], platform=getattr(model, "platform", PLATFORM),
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in model.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in model.outputs])

    def ModelInfer(self, request, context):
        remaining = context.time_remaining()  # a call without a deadline reports years
        deadline = None if remaining is None or remaining > NO_DEADLINE_S else time.monotonic() + remaining
        with _using(self.live) as repository:
            model = repository.get(request.model_name, request.model_version)
            feed, raw = _feed(model, request)
            outputs, parameters = model.infer(feed, [o.name for o in request.outputs] or None, deadline)
            release_id = repository.release.id
        kinds = {t.name: t.datatype for t in model.outputs}
        response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
        response.parameters["release"].string_param = release_id
        for key, value in parameters.items():
            response.parameters[key].string_param = value
        for name, array in outputs.items():
            data = encode(response.outputs.add(name=name), array, kinds[name], raw=raw)
            if data is not None:
                response.raw_output_contents.append(data)
        return response


class _using:
    """``with _using(live) as repository``: hold the live release for the length of a request."""

    def __init__(self, live: Live):
        self.live = live

    def __enter__(self) -> Repository:
        self.repository = self.live.acquire()
        return self.repository

    def __exit__(self, *exc) -> None:
        self.live.release(self.repository)


def _feed(model, request) -> tuple[dict, bool]:
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
    missing = sorted(n for n, spec in specs.items() if n not in feed and not spec.optional)
    if missing:
        raise InvalidInput(f"model '{model.name}' needs inputs {missing}")
    return feed, bool(raw)


class Observed(grpc.ServerInterceptor):
    """Every call: its request id, its errors as gRPC status codes (in this one place), its metrics
    and (for errors, or at DEBUG every call) a JSON log line."""

    def __init__(self, metrics=None, live: Live | None = None):
        self.metrics, self.live = metrics, live

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        metadata = dict(details.invocation_metadata or ())
        return handler._replace(unary_unary=self._wrap(handler.unary_unary, details.method,
                                                       metadata.get("x-request-id", "")))

    def _wrap(self, behaviour, method: str, header_id: str):
        short = method.rsplit("/", 1)[-1]

        def handle(request, context):
            token = request_id.set(new_request_id(getattr(request, "id", "") or header_id))
            started, status = time.perf_counter(), "OK"
            try:
                return behaviour(request, context)
            except ServingError as exc:
                status = exc.code
                log.warning("%s: %s", short, exc, extra={"fields": {"status": status, **_target(request)}})
                context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
            except Exception as exc:  # a bug, not the caller's fault: one line to the caller, the traceback here
                if isinstance(exc, grpc.RpcError) or context.code() is not None:
                    raise
                status = "INTERNAL"
                log.exception("unexpected error in %s", short, extra={"fields": _target(request)})
                context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
            finally:
                seconds = time.perf_counter() - started
                if short == "ModelInfer" and self.metrics is not None:
                    self._count(request.model_name, status, seconds)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("%s %s", short, status,
                              extra={"fields": {"status": status, "ms": round(seconds * 1000, 3), **_target(request)}})
                request_id.reset(token)
        return handle


    def _count(self, name: str, status: str, seconds: float) -> None:
        """Labelled with the model and version served, never with a caller's text (an unknown name
        is not counted: it would make a series per typo)."""
        repository = self.live.current if self.live is not None else None
        model = repository.models.get(name) if repository is not None else None
        if model is not None:
            self.metrics.request(model.name, model.version, status, seconds)


def _target(request) -> dict:
    name = getattr(request, "model_name", None) or getattr(request, "name", None)
    return {"model": name} if name else {}


def _generic_handler(service: InferenceService) -> grpc.GenericRpcHandler:
    rpcs = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        request = getattr(pb, method.input_type.name)
        response = getattr(pb, method.output_type.name)
        rpcs[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(service, method.name), request_deserializer=request.FromString,
            response_serializer=response.SerializeToString)
    return grpc.method_handlers_generic_handler(SERVICE, rpcs)


def build_server(live: Live | Repository, version: str, host: str, port: int, workers: int = 16,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, *, metrics=None, interceptors=(),
                 credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, int, object]:
    """The server, the port it bound (``port`` 0: any free one) and its health servicer.
    ``interceptors`` run before ``Observed`` (auth first); ``credentials``: TLS only."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    live = live if isinstance(live, Live) else Live(live)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
                         interceptors=[*interceptors, Observed(metrics, live)],
                         options=[("grpc.max_receive_message_length", max_message_bytes),
                                  ("grpc.max_send_message_length", max_message_bytes)])
    server.add_generic_rpc_handlers((_generic_handler(InferenceService(live, version)),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{host}:{port}"
    try:
        bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise ServingError(f"cannot listen on {address} (is another server using it?)")
    return server, bound, health_servicer
