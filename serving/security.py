"""Who may call the server: bearer tokens checked in one interceptor, and TLS (optionally mutual) credentials.

Tokens come from a file (one per line) and/or an environment variable (comma-separated); they are
compared in constant time and never appear in a message or a log line. The ``grpc.health.v1``
methods stay open so that load balancers can probe without a token.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from typing import Callable

import grpc

from millrace.serving.errors import ServingError

OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
DENIED = "missing or invalid bearer token (fix: send the metadata 'authorization: Bearer <token>')"


class AuthConfigError(ServingError):
    """The server's auth or TLS settings cannot be used (a missing file, no token). Fix the config, then restart."""

    code = "FAILED_PRECONDITION"


def load_tokens(file: str | None = None, env: str | None = None) -> frozenset[str]:
    """The bearer tokens of ``file`` (one per line; ``#`` comments and blank lines ignored) and of the
    environment variable named ``env`` (comma-separated). Both given: their union."""
    if not file and not env:
        raise AuthConfigError("no bearer-token source (fix: pass a token file or the name of an environment variable)")
    tokens: set[str] = set()
    if file:
        tokens |= _tokens_of_file(file)
    if env:
        tokens |= _tokens_of_env(env)
    if not tokens:
        sources = " and ".join(s for s in (file and f"file {file}", env and f"${env}") if s)
        raise AuthConfigError(f"{sources}: no bearer token (fix: put at least one token there)")
    return frozenset(tokens)


def _tokens_of_file(file: str) -> set[str]:
    try:
        with open(file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise AuthConfigError(f"{file}: cannot read the bearer-token file ({why}) "
                              "(fix: create it with one token per line, readable by the server)") from None
    tokens = set()
    for number, line in enumerate(lines, 1):
        token = line.strip()
        if token and not token.startswith("#"):
            _check(token, f"{file}: line {number}")
            tokens.add(token)
    return tokens


def _tokens_of_env(name: str) -> set[str]:
    value = os.environ.get(name)
    if value is None:
        raise AuthConfigError(f"${name} is not set (fix: export {name}=<token>[,<token>...])")
    tokens = {t.strip() for t in value.split(",") if t.strip()}
    for token in tokens:
        _check(token, f"${name}")
    return tokens


def _check(token: str, where: str) -> None:
    # A gRPC metadata value is visible ASCII: a token with anything else could never be sent.
    if not all("!" <= c <= "~" for c in token):
        raise AuthConfigError(f"{where}: a token holds a space or a non-ASCII character "
                              "(fix: tokens are visible ASCII, one per line or comma-separated)")


def _digest(token: str) -> bytes:
    # Comparing digests keeps every comparison the same length, so timing says nothing about a token's length.
    return hashlib.sha256(token.encode()).digest()


class BearerAuth(grpc.ServerInterceptor):
    """Lets a call through when its ``authorization`` metadata is ``Bearer <one of tokens>`` or its
    method is open; otherwise the call ends UNAUTHENTICATED and ``on_denied(method)`` is told."""

    def __init__(self, tokens: frozenset[str], open_methods: frozenset[str] = OPEN_METHODS,
                 on_denied: Callable[[str], None] | None = None):
        if not tokens:
            raise AuthConfigError("bearer auth without a token (fix: load at least one with load_tokens)")
        self._digests = tuple(_digest(t) for t in tokens)
        self.open_methods = frozenset(open_methods)
        self.on_denied = on_denied

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method in self.open_methods or self._allowed(handler_call_details.invocation_metadata):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:  # no such method: UNIMPLEMENTED, and no metric label a caller could invent
            return None
        if self.on_denied is not None:
            self.on_denied(method)
        return _denial(handler)

    def _allowed(self, metadata) -> bool:
        for key, value in metadata or ():
            if key.lower() != "authorization" or not isinstance(value, str):
                continue
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                continue
            given = _digest(token.strip())
            # Every token is compared (no early exit), each in constant time.
            matched = False
            for digest in self._digests:
                matched |= hmac.compare_digest(given, digest)
            if matched:
                return True
        return False


def _deny(request_or_iterator, context):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)


def _denial(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that aborts UNAUTHENTICATED. It has no deserializer:
    a caller without a token gets the same answer whatever bytes it sends, and they are never parsed."""
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_deny)
    return grpc.unary_unary_rpc_method_handler(_deny)


def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """TLS credentials from PEM files: the server's certificate chain and private key; with
    ``client_ca``, every client must present a certificate that CA signed (mutual TLS)."""
    chain = _pem(cert, b"-----BEGIN CERTIFICATE-----", "certificate")
    private = _pem(key, b"PRIVATE KEY-----", "private key")
    roots = _pem(client_ca, b"-----BEGIN CERTIFICATE-----", "client CA certificate") if client_ca else None
    return grpc.ssl_server_credentials([(private, chain)], root_certificates=roots,
                                       require_client_auth=roots is not None)


def _pem(path: str, marker: bytes, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise AuthConfigError(f"{path}: cannot read the TLS {what} ({exc.strerror}) "
                              "(fix: give the path of a PEM file the server can read)") from None
    if marker not in data:
        raise AuthConfigError(f"{path}: not a PEM {what} (fix: give a PEM file, '-----BEGIN ...')")
    return data
