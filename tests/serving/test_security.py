"""Bearer tokens and TLS: tokens from a file, an environment variable or both, each refusal (and no
message ever holding a token); the interceptor on a real in-process gRPC server (no token, a wrong
one, a right one, the open health check, a streaming method); TLS and mutual TLS with certificates
made at test time."""
from __future__ import annotations

import datetime
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from millrace.serving.security import DENIED, AuthConfigError, BearerAuth, load_tokens, server_credentials

SECRET = "s3cret-Token_1"
OTHER = "another.token~2"
ECHO = "/test.Echo/Say"
COUNT = "/test.Echo/Count"


# ---- tokens


def test_tokens_from_a_file_skip_comments_and_blank_lines(tmp_path):
    file = tmp_path / "tokens"
    file.write_text(f"# serving tokens\n\n  {SECRET}  \n{OTHER}\n   # indented comment\n")
    assert load_tokens(file=str(file)) == {SECRET, OTHER}


def test_tokens_from_an_environment_variable(monkeypatch):
    monkeypatch.setenv("MILLRACE_TEST_TOKENS", f" {SECRET} ,,{OTHER},")
    assert load_tokens(env="MILLRACE_TEST_TOKENS") == {SECRET, OTHER}


def test_tokens_from_both_are_their_union(tmp_path, monkeypatch):
    file = tmp_path / "tokens"
    file.write_text(f"{SECRET}\n")
    monkeypatch.setenv("MILLRACE_TEST_TOKENS", f"{OTHER},{SECRET}")
    assert load_tokens(file=str(file), env="MILLRACE_TEST_TOKENS") == {SECRET, OTHER}


def _refusal(**kwargs) -> str:
    with pytest.raises(AuthConfigError) as caught:
        load_tokens(**kwargs)
    message = str(caught.value)
    assert caught.value.code == "FAILED_PRECONDITION"
    assert "\n" not in message and "fix:" in message
    assert SECRET not in message and OTHER not in message
    return message


def test_each_bad_token_source_is_refused_in_one_line_without_the_token(tmp_path, monkeypatch):
    missing = tmp_path / "absent"
    assert str(missing) in _refusal(file=str(missing))
    assert "MILLRACE_TEST_UNSET" in _refusal(env="MILLRACE_TEST_UNSET")
    assert "no bearer-token source" in _refusal()

    only_comments = tmp_path / "comments"
    only_comments.write_text("# nothing here\n\n")
    assert str(only_comments) in _refusal(file=str(only_comments))
    monkeypatch.setenv("MILLRACE_TEST_EMPTY", " , ")
    assert "MILLRACE_TEST_EMPTY" in _refusal(env="MILLRACE_TEST_EMPTY")

    spaced = tmp_path / "spaced"
    spaced.write_text(f"{SECRET}\n{SECRET} {OTHER}\n")
    assert f"{spaced}: line 2" in _refusal(file=str(spaced))
    monkeypatch.setenv("MILLRACE_TEST_TOKENS", f"{SECRET},{OTHER}é")
    assert "MILLRACE_TEST_TOKENS" in _refusal(env="MILLRACE_TEST_TOKENS")

    folder = tmp_path / "folder"
    folder.mkdir()
    assert str(folder) in _refusal(file=str(folder))
    # One good source does not hide a broken one.
    assert "MILLRACE_TEST_UNSET" in _refusal(file=str(spaced.with_name("comments")), env="MILLRACE_TEST_UNSET")


# ---- the interceptor on a real server


def _serve(*interceptors, credentials=None):
    def say(request: bytes, context) -> bytes:
        return b"hello " + request

    def count(request: bytes, context):
        for i in range(3):
            yield str(i).encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=interceptors)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Count": grpc.unary_stream_rpc_method_handler(count)}),))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    address = "127.0.0.1:0"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    assert port
    server.start()
    return server, port


@pytest.fixture
def guarded():
    denied: list[str] = []
    server, port = _serve(BearerAuth(frozenset({SECRET, OTHER}), on_denied=denied.append))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield channel, denied
    channel.close()
    server.stop(None)


def _code(call) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def test_a_call_without_a_right_token_is_unauthenticated(guarded):
    channel, denied = guarded
    say = channel.unary_unary(ECHO)
    for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", SECRET),),
                     (("authorization", f"Basic {SECRET}"),), (("authorization", f"Bearer {SECRET}x"),),
                     (("authorization", "Bearer "),), (("x-token", f"Bearer {SECRET}"),)):
        code, details = _code(lambda: say(b"x", metadata=metadata, timeout=10))
        assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, DENIED), metadata
    assert denied == [ECHO] * 7


def test_a_right_token_passes_whatever_the_scheme_case(guarded):
    channel, denied = guarded
    say = channel.unary_unary(ECHO)
    assert say(b"a", metadata=(("authorization", f"Bearer {SECRET}"),), timeout=10) == b"hello a"
    assert say(b"b", metadata=(("authorization", f"bearer {OTHER}"),), timeout=10) == b"hello b"
    assert say(b"c", metadata=(("authorization", f"BEARER   {SECRET} "),), timeout=10) == b"hello c"
    assert denied == []


def test_a_streaming_method_is_guarded_too(guarded):
    channel, denied = guarded
    count = channel.unary_stream(COUNT)
    code, _ = _code(lambda: list(count(b"", timeout=10)))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert list(count(b"", metadata=(("authorization", f"Bearer {SECRET}"),), timeout=10)) == [b"0", b"1", b"2"]
    assert denied == [COUNT]


def test_the_health_check_is_open_and_an_unknown_method_is_not_counted(guarded):
    channel, denied = guarded
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    code, _ = _code(lambda: channel.unary_unary("/test.Echo/Nope")(b"", timeout=10))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert denied == []  # a caller cannot invent metric labels


def test_bearer_auth_needs_a_token():
    with pytest.raises(AuthConfigError):
        BearerAuth(frozenset())


# ---- TLS


HOST = "millrace.test"


def _certificates(tmp_path):
    """A CA, a server certificate for HOST and a client certificate, both signed by the CA (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def make(name, issuer_name, issuer_key, ca=False, dns=None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name or name)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if dns:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
        cert = builder.sign(issuer_key or key, hashes.SHA256())
        return key, cert

    def write(stem, key, cert):
        (tmp_path / f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (tmp_path / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    ca_key, ca_cert = make("millrace test CA", None, None, ca=True)
    write("ca", ca_key, ca_cert)
    write("server", *make(HOST, "millrace test CA", ca_key, dns=HOST))
    write("client", *make("client", "millrace test CA", ca_key))
    stems = ("ca", "server", "client")
    return {s: tmp_path / f"{s}.pem" for s in stems} | {f"{s}_key": tmp_path / f"{s}.key" for s in stems}


def _tls_channel(port, files, client_cert=False):
    creds = grpc.ssl_channel_credentials(
        root_certificates=files["ca"].read_bytes(),
        private_key=files["client_key"].read_bytes() if client_cert else None,
        certificate_chain=files["client"].read_bytes() if client_cert else None)
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", HOST)])


def test_tls_serves_a_verified_client_and_refuses_a_plain_one(tmp_path):
    files = _certificates(tmp_path)
    server, port = _serve(credentials=server_credentials(str(files["server"]), str(files["server_key"])))
    try:
        with _tls_channel(port, files) as channel:
            assert channel.unary_unary(ECHO)(b"tls", timeout=10) == b"hello tls"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
            code, _ = _code(lambda: plain.unary_unary(ECHO)(b"x", timeout=3))
        assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def test_mutual_tls_needs_a_client_certificate_and_stacks_with_tokens(tmp_path):
    files = _certificates(tmp_path)
    credentials = server_credentials(str(files["server"]), str(files["server_key"]), client_ca=str(files["ca"]))
    server, port = _serve(BearerAuth(frozenset({SECRET})), credentials=credentials)
    try:
        with _tls_channel(port, files) as anonymous:
            code, _ = _code(lambda: anonymous.unary_unary(ECHO)(b"x", timeout=3))
        assert code == grpc.StatusCode.UNAVAILABLE
        with _tls_channel(port, files, client_cert=True) as channel:
            say = channel.unary_unary(ECHO)
            assert _code(lambda: say(b"x", timeout=10))[0] == grpc.StatusCode.UNAUTHENTICATED
            assert say(b"m", metadata=(("authorization", f"Bearer {SECRET}"),), timeout=10) == b"hello m"
    finally:
        server.stop(None)


def test_missing_or_non_pem_tls_files_are_refused_by_path(tmp_path):
    files = _certificates(tmp_path)
    absent = tmp_path / "absent.pem"
    for cert, key, ca, named in ((absent, files["server_key"], None, absent),
                                 (files["server"], absent, None, absent),
                                 (files["server"], files["server_key"], absent, absent),
                                 (files["server_key"], files["server_key"], None, files["server_key"]),
                                 (files["server"], files["server"], None, files["server"])):
        with pytest.raises(AuthConfigError) as caught:
            server_credentials(str(cert), str(key), str(ca) if ca else None)
        assert str(caught.value).startswith(f"{named}: ") and "fix:" in str(caught.value)


def test_a_denial_has_the_kind_of_the_method_it_replaces():
    denied: list[str] = []
    auth = BearerAuth(frozenset({SECRET}), on_denied=denied.append)

    def details(method, metadata=()):
        return type("Details", (), {"method": method, "invocation_metadata": metadata})()

    for make in (grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler,
                 grpc.stream_unary_rpc_method_handler, grpc.stream_stream_rpc_method_handler):
        real = make(lambda request, context: None, request_deserializer=bytes.upper)
        denial = auth.intercept_service(lambda _: real, details("/test.Echo/Any"))
        assert denial is not real
        kind = (denial.request_streaming, denial.response_streaming)
        assert kind == (real.request_streaming, real.response_streaming)
        assert denial.request_deserializer is None  # a caller without a token is never parsed
        assert auth.intercept_service(lambda _: real, details("/x", (("authorization", f"Bearer {SECRET}"),))) is real
    assert denied == ["/test.Echo/Any"] * 4
