"""TLS: wss:// terminated on a listener, and wss:// backends, with certificates from `trustme`.

Everything runs on real loopback sockets: `websockets` clients and servers speak TLS through
Python's ssl module, the proxy through trio's SSLStream. Each test makes its own CA, so a
certificate from one never verifies under another.
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trustme
import websockets
from cryptography.hazmat.primitives import serialization
from websockets.trio.client import connect
from websockets.trio.server import ServerConnection, serve

from tests.conftest import ORIGIN, Backend
from tests.test_cli import assert_one_sentence, run_wsproxy, write_config
from wsproxy.config import BackendTLS, Config, ConfigError, HealthCheck, ListenerTLS, parse_config
from wsproxy.health import probe_server
from wsproxy.listening import open_listeners
from wsproxy.server import Proxy
from wsproxy.servers import ServerState
from wsproxy.tls import TLSError, backend_context, contexts_for, listener_context
from wsproxy.upstream import dial_tcp

CAP = 10.0  # seconds: no step of these tests takes longer on a healthy machine


@dataclass
class Certs:
    """A CA, and a certificate for localhost and 127.0.0.1 that it signed, in PEM files."""

    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


def make_certs(directory: Path, name: str = "server") -> Certs:
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    directory.mkdir(parents=True, exist_ok=True)
    ca_file, cert_file, key_file = (directory / f"{name}-{part}.pem" for part in "cak")
    ca.cert_pem.write_to_path(str(ca_file))
    issued.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    return Certs(ca, ca_file, cert_file, key_file)


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


def tls_config(
    backend_url: str, certs: Certs, *, listen_tls: str = "", pool: str = "", security: str = ""
) -> Config:
    listen_tls = listen_tls or f"{{cert: {certs.cert_file}, key: {certs.key_file}}}"
    return parse_config(
        f"""
listen:
  - {{address: 127.0.0.1:0, tls: {listen_tls}}}
security:
  allowed_origins: ["{ORIGIN}"]
{security}
routes:
  - {{path: /, pool: main}}
pools:
  main:
    servers: [{backend_url}]
{pool}
""",
        {},
    )


async def start_tls_proxy(nursery: trio.Nursery, config: Config) -> tuple[Proxy, int]:
    """The proxy on the configuration's own listeners (which carry its TLS), and its port."""
    proxy = Proxy(config)
    listening, _ = await open_listeners(proxy.config)
    await nursery.start(proxy.serve, listening)
    return proxy, listening[0].listener.socket.getsockname()[1]


async def echo_over(url: str, context: ssl.SSLContext, text: str = "hello") -> None:
    with trio.fail_after(CAP):
        async with connect(url, origin=ORIGIN, ssl=context, proxy=None) as ws:
            await ws.send(text)
            assert await ws.recv() == text


# ---------------------------------------------------------------- the listener


async def test_tls_listener_terminates_wss_and_forwards_https(
    nursery: trio.Nursery, backend: Backend, certs: Certs
) -> None:
    _, port = await start_tls_proxy(nursery, tls_config(backend.url, certs))
    await echo_over(f"wss://localhost:{port}/chat", certs.client_context(), "over tls")
    forwarded = backend.requests[0].headers
    assert forwarded["X-Forwarded-Proto"] == "https"
    assert backend.requests[0].path == "/chat"


async def test_tls_listener_refusals_arrive_over_tls(
    nursery: trio.Nursery, backend: Backend, certs: Certs
) -> None:
    _, port = await start_tls_proxy(nursery, tls_config(backend.url, certs))
    with trio.fail_after(CAP), pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(
            f"wss://localhost:{port}/", ssl=certs.client_context(), proxy=None
        ):  # no Origin
            pass
    assert refused.value.response.status_code == 403


async def test_tls_listener_minimum_version_is_enforced(
    nursery: trio.Nursery, backend: Backend, certs: Certs
) -> None:
    listen_tls = f"{{cert: {certs.cert_file}, key: {certs.key_file}, min_version: '1.3'}}"
    _, port = await start_tls_proxy(nursery, tls_config(backend.url, certs, listen_tls=listen_tls))
    old = certs.client_context()
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with trio.fail_after(CAP), pytest.raises(trio.BrokenResourceError) as failed:
        async with connect(f"wss://localhost:{port}/", origin=ORIGIN, ssl=old, proxy=None):
            pass
    assert isinstance(failed.value.__cause__, ssl.SSLError)
    await echo_over(f"wss://localhost:{port}/", certs.client_context())


async def test_tls_listener_survives_plain_http_and_garbage(
    nursery: trio.Nursery, backend: Backend, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    _, port = await start_tls_proxy(nursery, tls_config(backend.url, certs))
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05hello", b""):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(CAP):
            if junk:
                await stream.send_all(junk)
            else:
                await stream.send_eof()
            while await stream.receive_some(4096):
                pass  # the proxy closes the connection: no hang
        await stream.aclose()
    await echo_over(f"wss://localhost:{port}/", certs.client_context())
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


async def test_tls_listener_unfinished_handshake_is_dropped_at_the_deadline(
    nursery: trio.Nursery, backend: Backend, certs: Certs
) -> None:
    config = tls_config(backend.url, certs, security="  handshake_timeout: 0.3s")
    _, port = await start_tls_proxy(nursery, config)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        with trio.fail_after(CAP):
            assert await stream.receive_some(4096) == b""  # closed, having said nothing


async def test_tls_listener_after_a_proxy_protocol_header(
    nursery: trio.Nursery, backend: Backend, certs: Certs
) -> None:
    """The PROXY header comes in clear, the TLS handshake right behind it, in one packet."""
    config = parse_config(
        f"""
listen:
  - {{address: 127.0.0.1:0, proxy_protocol: true,
     tls: {{cert: {certs.cert_file}, key: {certs.key_file}}}}}
security: {{allowed_origins: ["{ORIGIN}"]}}
routes: [{{path: /, pool: main}}]
pools: {{main: {{servers: [{backend.url}]}}}}
""",
        {},
    )
    _, port = await start_tls_proxy(nursery, config)
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    header = b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n"
    with trio.fail_after(CAP):
        async with connect(
            "wss://localhost/",
            stream=HeaderFirst(tcp, header),
            origin=ORIGIN,
            ssl=certs.client_context(),
            server_hostname="localhost",
            proxy=None,
        ) as ws:
            await ws.send("behind an L4 balancer")
            assert await ws.recv() == "behind an L4 balancer"
    assert backend.requests[0].headers["X-Forwarded-For"] == "192.0.2.10"
    assert backend.requests[0].headers["X-Forwarded-Proto"] == "https"


class HeaderFirst(trio.abc.Stream):
    """A TCP stream whose first send carries `header` in front: one segment, as an L4
    balancer sends a PROXY header and the client's first bytes."""

    def __init__(self, stream: trio.SocketStream, header: bytes) -> None:
        self._stream = stream
        self._header = header

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        data, self._header = self._header + bytes(data), b""
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()


# ---------------------------------------------------------------- wss:// backends


@dataclass
class SecureBackend:
    port: int
    server_names: list[str | None]
    client_certs: list[object]

    @property
    def url(self) -> str:
        return f"wss://localhost:{self.port}"


async def start_secure_backend(
    nursery: trio.Nursery, certs: Certs, *, client_ca: Certs | None = None
) -> SecureBackend:
    """A `websockets` echo server over TLS that records each SNI name and client certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert_file, certs.key_file)
    names: list[str | None] = []

    def record_name(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        names.append(name)

    context.sni_callback = record_name
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        client_ca.ca.configure_trust(context)
    peers: list[object] = []

    async def echo(ws: ServerConnection) -> None:
        stream = ws.stream
        assert isinstance(stream, trio.SSLStream)
        peers.append(stream.getpeercert())
        try:
            async for message in ws:
                await ws.send(message)
        except websockets.ConnectionClosed:
            pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(functools.partial(serve, echo, listeners=listeners, ssl=context))
    return SecureBackend(listeners[0].socket.getsockname()[1], names, peers)


def plain_config(server_url: str, pool: str = "") -> Config:
    return parse_config(
        f"""
listen: [{{address: 127.0.0.1:0}}]
security: {{allowed_origins: ["{ORIGIN}"]}}
routes: [{{path: /, pool: main}}]
pools:
  main:
    servers: [{server_url}]
    retries: 0
{pool}
""",
        {},
    )


async def start_plain_proxy(nursery: trio.Nursery, config: Config) -> str:
    _, port = await start_tls_proxy(nursery, config)
    return f"ws://127.0.0.1:{port}/"


async def status_of(url: str) -> int:
    with trio.fail_after(CAP):
        try:
            async with connect(url, origin=ORIGIN, proxy=None) as ws:
                await ws.send("through")
                assert await ws.recv() == "through"
                return 101
        except websockets.InvalidStatus as exc:
            return exc.response.status_code


async def test_tls_backend_verified_with_the_pool_ca_and_sni(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = make_certs(tmp_path / "server")
    backend = await start_secure_backend(nursery, server)
    url = await start_plain_proxy(
        nursery, plain_config(backend.url, f"    tls: {{ca: {server.ca_file}}}")
    )
    assert await status_of(url) == 101
    assert backend.server_names == ["localhost"]


async def test_tls_backend_with_an_untrusted_certificate_is_a_502(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_certs(tmp_path / "server")
    other = make_certs(tmp_path / "other")
    backend = await start_secure_backend(nursery, server)
    url = await start_plain_proxy(
        nursery, plain_config(backend.url, f"    tls: {{ca: {other.ca_file}}}")
    )
    assert await status_of(url) == 502
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "TLS handshake failed: certificate verify failed: unable to get local issuer" in m
        for m in messages
    ), messages


async def test_tls_backend_whose_name_does_not_match_is_a_502(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = make_certs(tmp_path / "server")
    backend = await start_secure_backend(nursery, server)
    # The certificate names localhost and 127.0.0.1; ::1 style names aside, "127.0.0.2" is not it.
    url = await start_plain_proxy(
        nursery,
        plain_config(f"wss://127.0.0.2:{backend.port}", f"    tls: {{ca: {server.ca_file}}}"),
    )
    assert await status_of(url) == 502


async def test_tls_backend_verify_false_accepts_any_certificate(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = await start_secure_backend(nursery, make_certs(tmp_path / "server"))
    url = await start_plain_proxy(nursery, plain_config(backend.url, "    tls: {verify: false}"))
    assert await status_of(url) == 101


async def test_tls_backend_gets_the_client_certificate(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = make_certs(tmp_path / "server")
    client = make_certs(tmp_path / "client")
    backend = await start_secure_backend(nursery, server, client_ca=client)
    with_cert = (
        f"    tls: {{ca: {server.ca_file}, cert: {client.cert_file}, key: {client.key_file}}}"
    )
    url = await start_plain_proxy(nursery, plain_config(backend.url, with_cert))
    assert await status_of(url) == 101
    assert backend.client_certs
    assert backend.client_certs[0]

    without = await start_plain_proxy(
        nursery, plain_config(backend.url, f"    tls: {{ca: {server.ca_file}}}")
    )
    assert await status_of(without) == 502


async def test_tls_health_checks_reach_wss_servers(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = make_certs(tmp_path / "server")
    backend = await start_secure_backend(nursery, server)
    [configured] = plain_config(backend.url).pools["main"].servers
    state = ServerState(configured, "127.0.0.1")
    check = HealthCheck(type="websocket", timeout=5.0)
    trusted = backend_context(BackendTLS(ca=str(server.ca_file)), "tls")
    assert await probe_server(state, check, dial_tcp, trusted) is None
    untrusted = backend_context(None, "tls")
    problem = await probe_server(state, check, dial_tcp, untrusted)
    assert problem is not None
    assert "TLS handshake" in problem


# ---------------------------------------------------------------- files


@pytest.fixture
def broken_files(tmp_path: Path, certs: Certs) -> dict[str, Path]:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    other = make_certs(tmp_path / "other")
    return {"missing": tmp_path / "nope.pem", "garbage": garbage, "other_key": other.key_file}


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        ("missing", None, "no such file"),
        ("garbage", None, "are not a matching PEM certificate and key"),
        (None, "other_key", "are not a matching PEM certificate and key"),
    ],
)
def test_tls_unusable_listener_files_are_one_sentence(
    broken_files: dict[str, Path], certs: Certs, cert: str | None, key: str | None, message: str
) -> None:
    tls = ListenerTLS(
        cert=str(broken_files[cert] if cert else certs.cert_file),
        key=str(broken_files[key] if key else certs.key_file),
    )
    with pytest.raises(TLSError) as caught:
        listener_context(tls, "listen[0].tls")
    assert str(caught.value).startswith("listen[0].tls: ")
    assert message in str(caught.value)


def test_tls_an_encrypted_key_is_refused_without_a_prompt(tmp_path: Path, certs: Certs) -> None:
    key = serialization.load_pem_private_key(certs.key_file.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    tls = ListenerTLS(cert=str(certs.cert_file), key=str(encrypted))
    with pytest.raises(TLSError, match=r"encrypted\.key is encrypted: give wsproxy an unencrypted"):
        listener_context(tls, "listen[0].tls")


def test_tls_unusable_ca_file_is_one_sentence(broken_files: dict[str, Path]) -> None:
    config = plain_config("wss://a:1", f"    tls: {{ca: {broken_files['missing']}}}")
    with pytest.raises(ConfigError) as caught:
        contexts_for(config)
    assert caught.value.problems == [f"pools.main.tls.ca: {broken_files['missing']}: no such file"]


def test_tls_a_ca_file_without_certificates_is_one_sentence(broken_files: dict[str, Path]) -> None:
    config = plain_config("wss://a:1", f"    tls: {{ca: {broken_files['garbage']}}}")
    with pytest.raises(ConfigError) as caught:
        contexts_for(config)
    [problem] = caught.value.problems
    assert problem.startswith(f"pools.main.tls.ca: {broken_files['garbage']} holds no PEM")


def test_tls_every_unusable_file_is_named_at_once(
    tmp_path: Path, broken_files: dict[str, Path]
) -> None:
    """Like every other problem of a configuration: all of them, not the first only."""
    config = write_config(tmp_path / "c.yaml", "wss://127.0.0.1:9")
    text = config.read_text().replace(
        "  - address: 127.0.0.1:0",
        f"  - address: 127.0.0.1:0\n    tls: {{cert: {tmp_path}/no.crt, key: {tmp_path}/no.key}}",
    )
    config.write_text(text + f"    tls: {{ca: {broken_files['missing']}}}\n")
    result = run_wsproxy("check", "-c", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"wsproxy: listen[0].tls: {tmp_path}/no.crt: no such file",
        f"wsproxy: pools.main.tls.ca: {broken_files['missing']}: no such file",
    ]


def test_tls_serve_and_check_with_a_missing_certificate_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml")
    text = config.read_text().replace(
        "  - address: 127.0.0.1:0",
        f"  - address: 127.0.0.1:0\n    tls: {{cert: {tmp_path}/no.crt, key: {tmp_path}/no.key}}",
    )
    config.write_text(text)
    for command in ("check", "serve"):
        result = run_wsproxy(command, "-c", str(config))
        assert result.returncode == 2
        assert "no.crt: no such file" in assert_one_sentence(result.stderr)


def test_tls_plain_config_needs_no_context() -> None:
    listeners, pools = contexts_for(plain_config("ws://127.0.0.1:1"))
    assert listeners == [None]
    assert pools == {}


async def test_tls_sni_callback_records(nursery: trio.Nursery, tmp_path: Path) -> None:
    """The backend helper itself records SNI, so a missing name would show."""
    server = make_certs(tmp_path / "server")
    backend = await start_secure_backend(nursery, server)
    with trio.fail_after(CAP):
        async with connect(
            f"wss://127.0.0.1:{backend.port}/", ssl=server.client_context(), proxy=None
        ) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
    assert backend.server_names == [None]  # an address is never sent as SNI
