"""Bearer tokens and TLS on the running server, with the stock client (tritonclient.grpc) in another
process: tokens from an environment variable and from a file (none or a wrong one: UNAUTHENTICATED; the
health check stays open; no token ever in the server's logs); TLS with certificates made at test time
(a verified client answers, a plaintext one or one trusting another CA cannot connect); mutual TLS
stacked with tokens; a missing token file stops the server at start with one line naming it."""
from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.serving.conftest import ROOT, configure, stock_client
from tests.serving.test_limits import (MODEL, code, first_output, infer, inputs_for, model_part, released_copy,
                                       serve)

pytestmark = pytest.mark.slow
ENV = "MILLRACE_TEST_TOKENS"
INFER = "/inference.GRPCInferenceService/ModelInfer"
UNAUTHENTICATED = "StatusCode.UNAUTHENTICATED"
UNAVAILABLE = "StatusCode.UNAVAILABLE"


@pytest.fixture(scope="module")
def released(trained_tiny_state, tmp_path_factory):
    return released_copy(trained_tiny_state, tmp_path_factory)


@pytest.fixture(scope="module")
def good(released):
    return inputs_for(model_part(released))


def _tokens(n: int = 3) -> list[str]:
    return [f"tok-{secrets.token_urlsafe(18)}" for _ in range(n)]


# ---- bearer tokens


def test_tokens_from_an_environment_variable_guard_every_method_but_health(released, good, tmp_path):
    right, second, wrong = _tokens()
    server = serve(released, tmp_path / "project", {"auth": {"tokens_env": ENV}}, "--log-level", "DEBUG",
                   env={ENV: f"{right}, {second}"})
    try:
        answers = stock_client(
            server.address,
            infer(good), infer(good, token=wrong), infer(good, token=right), infer(good, token=second),
            {"do": "health"}, {"do": "health", "token": right},
            {"do": "metadata", "model": MODEL}, {"do": "metadata", "model": MODEL, "token": right},
            {"do": "health_v1", "service": ""}, {"do": "health_v1", "service": "inference.GRPCInferenceService"})
        denied = server.metric("millrace_serving_denied_total", method=INFER)
    finally:
        stderr = server.stop()
    (none, bad, ok, ok_second, live_none, live, meta_none, meta, health, health_service) = answers
    for refused in (none, bad, live_none, meta_none):
        assert code(refused) == UNAUTHENTICATED, refused
        assert "bearer token" in refused["message"] and right not in refused["message"]
    np.testing.assert_array_equal(first_output(ok), first_output(ok_second))
    assert live["live"] and live["ready"] and live["server"]["name"] == "millrace"
    assert meta["name"] == MODEL
    assert health == "SERVING" and health_service == "SERVING"  # load balancers probe without a token
    assert denied == 2
    # The tokens (right and wrong) never reach a log line, even at DEBUG with a line per call.
    assert '"ModelInfer OK"' in stderr
    for token in (right, second, wrong):
        assert token not in stderr


def test_tokens_from_a_file_beside_the_project(released, good, tmp_path):
    right, second, wrong = _tokens()
    server = serve(released, tmp_path / "project", {"auth": {"tokens_file": "serving.tokens"}},
                   files={"serving.tokens": f"# who may call\n\n  {right}  \n{second}\n"})
    try:
        none, bad, ok, ready, ready_none, health = stock_client(
            server.address, infer(good), infer(good, token=wrong), infer(good, token=second),
            {"do": "ready", "model": MODEL, "token": right}, {"do": "ready", "model": MODEL},
            {"do": "health_v1", "service": ""})
    finally:
        stderr = server.stop()
    assert code(none) == UNAUTHENTICATED and code(bad) == UNAUTHENTICATED and code(ready_none) == UNAUTHENTICATED
    assert first_output(ok).shape[0] == 3 and ready is True and health == "SERVING"
    assert right not in stderr and second not in stderr and wrong not in stderr


def test_a_missing_token_file_stops_the_server_with_one_line_naming_it(released, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(released.project, project)
    configure(project, {"auth": {"tokens_file": "absent.tokens"}})
    proc = subprocess.run([sys.executable, "-m", "millrace.serving", "--project", str(project), "--port", "0",
                           "--metrics-port", "0"], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "MILLRACE_STATE_DIR": str(released.state)})
    assert proc.returncode != 0 and proc.stdout == ""
    # Besides the JSON log lines of the release loaded before (a warning or two), one line says why.
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith('{"ts": ')]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {project / 'absent.tokens'}: ") and "fix:" in lines[0]
    assert "Traceback" not in proc.stderr


# ---- TLS


def _certificates(folder) -> dict:
    """PEM files in ``folder``: a CA, a server certificate for 127.0.0.1 and localhost and a client
    certificate, both signed by it; another CA with a client certificate of its own ("rogue")."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def make(name, issuer=None, ca=False, server=False):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(issuer[1].subject if issuer else
                                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return key, builder.sign(issuer[0] if issuer else key, hashes.SHA256())

    folder.mkdir(parents=True, exist_ok=True)
    files = {}

    def write(stem, key, cert):
        files[stem] = folder / f"{stem}.pem"
        files[f"{stem}_key"] = folder / f"{stem}.key"
        files[stem].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{stem}_key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    ca = make("millrace test CA", ca=True)
    rogue = make("another CA", ca=True)
    write("ca", *ca)
    write("server", *make("127.0.0.1", ca, server=True))
    write("client", *make("a client", ca))
    write("rogue", *rogue)
    write("rogue_client", *make("a rogue client", rogue))
    return files


def _tls(files, client: str | None = None, ca: str = "ca") -> dict:
    out = {"ca": str(files[ca])}
    if client:
        out |= {"cert": str(files[client]), "key": str(files[f"{client}_key"])}
    return out


def test_tls_serves_a_verified_client_and_no_plaintext_one(released, good, tmp_path):
    files = _certificates(tmp_path / "pki")
    server = serve(released, tmp_path / "project", {"tls": {"cert": "server.pem", "key": "server.key"}},
                   files={"server.pem": files["server"].read_text(), "server.key": files["server_key"].read_text()})
    try:
        tls = _tls(files)
        ok, health, health_v1, plain, plain_health, distrusted = stock_client(
            server.address, infer(good, tls=tls), {"do": "health", "tls": tls},
            {"do": "health_v1", "service": "", "tls": tls}, infer(good, timeout=10),
            {"do": "health_v1", "service": "", "timeout": 10}, infer(good, timeout=10, tls=_tls(files, ca="rogue")))
    finally:
        server.stop()
    assert first_output(ok).shape[0] == 3 and ok["parameters"]["release"] == released.release
    assert health["live"] and health["ready"] and health_v1 == "SERVING"
    for refused in (plain, plain_health, distrusted):  # no handshake: nothing reaches the service
        assert code(refused) == UNAVAILABLE, refused


def test_mutual_tls_needs_a_certificate_of_the_client_ca_and_stacks_with_tokens(released, good, tmp_path):
    files = _certificates(tmp_path / "pki")
    right, = _tokens(1)
    (tmp_path / "tokens").write_text(f"{right}\n")
    server = serve(released, tmp_path / "project",
                   {"tls": {"cert": str(files["server"]), "key": str(files["server_key"]),
                            "client_ca": str(files["ca"])},
                    "auth": {"tokens_file": str(tmp_path / "tokens")}})
    try:
        anonymous, rogue, no_token, ok = stock_client(
            server.address, infer(good, timeout=10, tls=_tls(files)),
            infer(good, timeout=10, tls=_tls(files, client="rogue_client"), token=right),
            infer(good, tls=_tls(files, client="client")),
            infer(good, tls=_tls(files, client="client"), token=right))
    finally:
        server.stop()
    assert code(anonymous) == UNAVAILABLE, anonymous  # no client certificate: the handshake fails
    assert code(rogue) == UNAVAILABLE, rogue  # a certificate of another CA: likewise
    assert code(no_token) == UNAUTHENTICATED, no_token  # the certificate is not a token
    assert first_output(ok).shape[0] == 3
