"""TLS and mutual TLS on gRPC and REST, with certificates generated here (the `cryptography` package).

One server (`rustserve start --tls-cert --tls-key`) and one mutual-TLS server (`--tls-ca --tls-verify-client`) run as
real processes on loopback; our `rustserve.client.Client`, grpcio and `requests` talk to them. Bad certificate / key
files are checked against the native `Server` in-process (no listener survives a failed start).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import models
import numpy as np
import pytest
import requests
from conftest import ADD_CONFIG, ServerProcess, launch_server, write_servable
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rustserve import client
from rustserve._rustserve import Server, ServerStartError

X1 = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
X2 = np.array([[5.0, 6.0], [7.0, 8.0]], dtype=np.float32)


# --- certificates --------------------------------------------------------------------------------------------------


@dataclass
class Pki:
    """PEM files: a CA, a server certificate for 127.0.0.1 / localhost, and client certificates."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_key: Path  # a key that matches no certificate
    rogue_cert: Path  # a client certificate from a CA the server does not trust
    rogue_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, *items: x509.Certificate | ec.EllipticCurvePrivateKey) -> Path:
    pem = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            pem += item.public_bytes(serialization.Encoding.PEM)
        else:
            pem += item.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
    path.write_bytes(pem)
    return path


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    return _issue(common_name, key, _name(common_name), key, ca=True), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key = _ca("rustserve test CA")
    rogue_ca, rogue_ca_key = _ca("untrusted CA")
    server_key, client_key, rogue_key, other_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    server_cert = _issue("127.0.0.1", server_key, ca_cert.subject, ca_key, ca=False)
    client_cert = _issue("client", client_key, ca_cert.subject, ca_key, ca=False)
    rogue_cert = _issue("rogue", rogue_key, rogue_ca.subject, rogue_ca_key, ca=False)
    return Pki(
        ca=_write(root / "ca.pem", ca_cert),
        server_cert=_write(root / "server.pem", server_cert),
        server_key=_write(root / "server.key", server_key),
        client_cert=_write(root / "client.pem", client_cert),
        client_key=_write(root / "client.key", client_key),
        other_key=_write(root / "other.key", other_key),
        rogue_cert=_write(root / "rogue.pem", rogue_cert),
        rogue_key=_write(root / "rogue.key", rogue_key),
    )


# --- servers -------------------------------------------------------------------------------------------------------

LAUNCHER = """
import sys

from rustserve import cli

sys.exit(cli.main(sys.argv[1:] + {extra!r}))
"""


def _launch(tmp: Path, name: str, extra: list[str]) -> ServerProcess:
    """`rustserve start` on the add servable with `extra` flags appended."""
    tree = tmp / f"{name}-servables"
    add = write_servable(tree, "add", ADD_CONFIG, (1,))
    models.build_add(add / "1" / "add.onnx")
    script = tmp / f"{name}.py"
    script.write_text(LAUNCHER.format(extra=extra))
    return launch_server(tree, tmp / f"{name}-logs", command=[sys.executable, str(script)])


@pytest.fixture(scope="module")
def tls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = _launch(
        tmp_path_factory.mktemp("tls"), "tls", ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def mtls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    flags = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-ca", str(pki.ca)]
    proc = _launch(tmp_path_factory.mktemp("mtls"), "mtls", [*flags, "--tls-verify-client"])
    yield proc
    proc.stop()


def _add(address: str, ssl_config: client.SSLConfig | None) -> np.ndarray:
    result = client.Client(address, "add", "add_common", ssl_config=ssl_config).infer({"x1": X1, "x2": X2})
    assert isinstance(result, list) and "error" not in result[0], result
    return np.asarray(result[0]["y"])


# --- TLS -----------------------------------------------------------------------------------------------------------


def test_grpc_over_tls_with_our_client(tls_server: ServerProcess, pki: Pki) -> None:
    y = _add(tls_server.grpc_address, client.SSLConfig(custom_ca=str(pki.ca)))
    np.testing.assert_array_equal(y, X1 + X2)


def test_rest_over_tls_with_requests(tls_server: ServerProcess, pki: Pki) -> None:
    url = f"https://127.0.0.1:{tls_server.rest_port}/model/add:add_common"
    body = {"instances": [{"x1": X1.tolist(), "x2": X2.tolist()}]}
    reply = requests.post(url, json=body, verify=str(pki.ca), timeout=30)
    assert reply.status_code == 200
    np.testing.assert_array_equal(np.asarray(reply.json()["instances"][0]["y"]), X1 + X2)
    # The v2 routes share the listener.
    ready = requests.get(f"https://127.0.0.1:{tls_server.rest_port}/v2/health/ready", verify=str(pki.ca), timeout=30)
    assert ready.status_code == 200


def test_rest_client_that_does_not_trust_the_server_fails(tls_server: ServerProcess) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://127.0.0.1:{tls_server.rest_port}/v2/health/live", timeout=30)


def test_plain_connections_to_tls_ports_fail_cleanly_and_the_server_keeps_serving(
    tls_server: ServerProcess, pki: Pki
) -> None:
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{tls_server.rest_port}/v2/health/live", timeout=30)
    plain = client.Client(tls_server.grpc_address, "add", "add_common")
    result = plain.infer({"x1": X1, "x2": X2})
    assert isinstance(result, dict) and "error" in result, result
    # Raw garbage, then a half-open connection that says nothing and hangs up.
    for payload in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 64, b""):
        for port in (tls_server.grpc_port, tls_server.rest_port):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                # A reset or an EOF are both a clean refusal; what matters is that nothing hangs or crashes.
                with contextlib.suppress(ConnectionError, TimeoutError):
                    sock.recv(4096)
    assert tls_server.alive()
    np.testing.assert_array_equal(_add(tls_server.grpc_address, client.SSLConfig(custom_ca=str(pki.ca))), X1 + X2)


# --- mutual TLS ----------------------------------------------------------------------------------------------------


def test_mtls_accepts_a_client_certificate(mtls_server: ServerProcess, pki: Pki) -> None:
    ssl = client.SSLConfig(certificate=str(pki.client_cert), private_key=str(pki.client_key), custom_ca=str(pki.ca))
    np.testing.assert_array_equal(_add(mtls_server.grpc_address, ssl), X1 + X2)
    url = f"https://127.0.0.1:{mtls_server.rest_port}/model/add:add_common"
    body = {"instances": [{"x1": X1.tolist(), "x2": X2.tolist()}]}
    reply = requests.post(url, json=body, verify=str(pki.ca), cert=(str(pki.client_cert), str(pki.client_key)))
    assert reply.status_code == 200
    np.testing.assert_array_equal(np.asarray(reply.json()["instances"][0]["y"]), X1 + X2)


@pytest.mark.parametrize("who", ["no certificate", "untrusted certificate"])
def test_mtls_refuses_clients_without_a_trusted_certificate(mtls_server: ServerProcess, pki: Pki, who: str) -> None:
    if who == "no certificate":
        ssl = client.SSLConfig(custom_ca=str(pki.ca))
        cert = None
    else:
        ssl = client.SSLConfig(certificate=str(pki.rogue_cert), private_key=str(pki.rogue_key), custom_ca=str(pki.ca))
        cert = (str(pki.rogue_cert), str(pki.rogue_key))
    result = client.Client(mtls_server.grpc_address, "add", "add_common", ssl_config=ssl).infer({"x1": X1, "x2": X2})
    assert isinstance(result, dict) and "error" in result, result
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        requests.get(f"https://127.0.0.1:{mtls_server.rest_port}/v2/health/live", verify=str(pki.ca), cert=cert)
    assert mtls_server.alive()
    good = client.SSLConfig(certificate=str(pki.client_cert), private_key=str(pki.client_key), custom_ca=str(pki.ca))
    np.testing.assert_array_equal(_add(mtls_server.grpc_address, good), X1 + X2)


# --- bad settings --------------------------------------------------------------------------------------------------


def test_bad_key_pair_fails_the_start_naming_the_file(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.key"
    not_pem = tmp_path / "garbage.pem"
    not_pem.write_text("not a certificate")
    native = Server()
    try:
        mismatch = (str(pki.server_cert), str(pki.other_key), None, False)
        with pytest.raises(ServerStartError, match=r"create server failed, address 127\.0\.0\.1:0: .*other\.key"):
            native.start_grpc("127.0.0.1:0", 1, mismatch)
        with pytest.raises(ServerStartError, match=r"Serving Error: load private_key from .*other\.key failed"):
            native.start_rest("127.0.0.1:0", 1, mismatch)
        with pytest.raises(ServerStartError, match=r"load private_key from .*missing\.key failed"):
            native.start_rest("127.0.0.1:0", 1, (str(pki.server_cert), str(missing), None, False))
        with pytest.raises(ServerStartError, match=r"load certificate from .*garbage\.pem failed"):
            native.start_rest("127.0.0.1:0", 1, (str(not_pem), str(pki.server_key), None, False))
        with pytest.raises(ServerStartError, match=r"load custom_ca from .*garbage\.pem failed"):
            native.start_grpc("127.0.0.1:0", 1, (str(pki.server_cert), str(pki.server_key), str(not_pem), True))
        # A failed start leaves nothing half-running: the good settings start afterwards.
        good = (str(pki.server_cert), str(pki.server_key), None, False)
        assert native.start_grpc("127.0.0.1:0", 1, good) > 0
        assert native.start_rest("127.0.0.1:0", 1, good) > 0
    finally:
        native.stop()


def test_ssl_config_checks_its_arguments() -> None:
    from rustserve import server

    with pytest.raises(RuntimeError, match="custom_ca"):
        server.SSLConfig("cert.pem", "key.pem", verify_client=True)
    with pytest.raises(RuntimeError, match="The type of ssl_config should be type of SSLConfig"):
        server._check_ssl_config("cert.pem")  # type: ignore[arg-type]
