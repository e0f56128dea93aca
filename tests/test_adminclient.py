"""wsproxy/adminclient.py: finding the endpoint and its token, the table, and failures in one
sentence. The requests against a running proxy are tests/test_cli.py's."""

from __future__ import annotations

import socket

import pytest
import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import connect

from tests.conftest import ORIGIN, Backend, proxy_config
from tests.test_admin import CAP, start_with_admin
from wsproxy.adminapi import CloseSession, SessionQuery, SessionRow, Undrain
from wsproxy.adminclient import (
    AdminError,
    Endpoint,
    act,
    age_text,
    find_endpoint,
    list_sessions,
    needs_config,
    request,
    sessions_table,
)
from wsproxy.config import Admin

ADMIN = Admin(address="127.0.0.1:9090", host="127.0.0.1", port=9090, token="from-the-file")
ENV = {"WSPROXY_ADMIN_TOKEN": "from-the-environment"}


@pytest.mark.parametrize(
    ("url", "token", "env", "admin", "endpoint"),
    [
        (None, None, {}, ADMIN, Endpoint("127.0.0.1", 9090, "from-the-file")),
        (None, None, ENV, ADMIN, Endpoint("127.0.0.1", 9090, "from-the-environment")),
        (None, "flag", ENV, ADMIN, Endpoint("127.0.0.1", 9090, "flag")),
        ("http://10.0.0.1:81", None, {}, ADMIN, Endpoint("10.0.0.1", 81, "from-the-file")),
        ("10.0.0.1:81", None, {}, None, Endpoint("10.0.0.1", 81, "")),
        ("http://host", "t", {}, None, Endpoint("host", 80, "t")),
        ("http://[::1]:82/", None, ENV, None, Endpoint("::1", 82, "from-the-environment")),
        (
            None,
            None,
            {},
            Admin(address="0.0.0.0:1", host="0.0.0.0", port=1),
            Endpoint("127.0.0.1", 1, ""),
        ),
        (None, None, {}, Admin(address="[::]:1", host="::", port=1), Endpoint("::1", 1, "")),
        (None, None, {}, Admin(address=":1", host="", port=1), Endpoint("127.0.0.1", 1, "")),
    ],
)
def test_adminclient_find_endpoint(
    url: str | None, token: str | None, env: dict[str, str], admin: Admin | None, endpoint: Endpoint
) -> None:
    assert find_endpoint(url, token, env, admin) == endpoint


@pytest.mark.parametrize(
    "url",
    [
        "https://a:1",
        "http://a:port",
        "http://a:65536",
        "http://:1",
        "ftp://a",
        "http://[::1",
        "[::1:80",
        "http://a b:1",
        "http://a\x01b:1",
    ],
)
def test_adminclient_find_endpoint_refuses_a_url_it_cannot_ask(url: str) -> None:
    with pytest.raises(AdminError) as refused:
        find_endpoint(url, None, {}, None)
    assert str(refused.value) == f"--url must be http://HOST:PORT, got {url!r}"


@pytest.mark.parametrize(
    "token", ["jeton-\u00e0-moi-0123456789", "\u20ac" * 16, "a b", "a\r\nX: y"]
)
@pytest.mark.parametrize("by_flag", [True, False])
def test_adminclient_find_endpoint_refuses_a_token_no_configuration_can_have(
    token: str, by_flag: bool
) -> None:
    flag, env = (token, {}) if by_flag else (None, {"WSPROXY_ADMIN_TOKEN": token})
    with pytest.raises(AdminError) as refused:
        find_endpoint("http://a:1", flag, env, None)
    assert str(refused.value) == (
        "the admin token (--token, $WSPROXY_ADMIN_TOKEN) must be printable ASCII "
        "without spaces, as admin.token is"
    )


def test_adminclient_find_endpoint_without_url_or_admin_section() -> None:
    with pytest.raises(AdminError) as refused:
        find_endpoint(None, "t", {}, None)
    assert str(refused.value) == (
        "the configuration has no admin.address: give --url http://HOST:PORT"
    )


def test_adminclient_needs_config_only_for_what_flags_leave_to_it() -> None:
    assert needs_config(None, "t", ENV, acting=False)
    assert not needs_config("http://a:1", None, {}, acting=False)
    assert needs_config("http://a:1", None, {}, acting=True)
    assert not needs_config("http://a:1", "t", {}, acting=True)
    assert not needs_config("http://a:1", None, ENV, acting=True)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (59.9, "59s"),
        (60, "1m00s"),
        (303.5, "5m03s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (7620, "2h07m"),
        (100 * 3600, "100h00m"),
    ],
)
def test_adminclient_age_text(seconds: float, text: str) -> None:
    assert age_text(seconds) == text


def test_adminclient_sessions_table_aligns_text_left_and_numbers_right() -> None:
    rows = [
        SessionRow("a1-1", "192.0.2.1:5000", "/chat", "chat", "ws://a:1", 75.2, 3, 12, 300, 45678),
        SessionRow("a1-2f", "[2001:db8::1]:6", "/", "p", "ws://bb:2", 5.0, 0, 0, 0, 0),
    ]
    assert sessions_table(rows).splitlines() == [
        "ID     CLIENT           POOL  SERVER     ROUTE    AGE"
        "  MSGS IN  MSGS OUT  BYTES IN  BYTES OUT",
        "a1-1   192.0.2.1:5000   chat  ws://a:1   /chat  1m15s"
        "        3        12       300      45678",
        "a1-2f  [2001:db8::1]:6  p     ws://bb:2  /         5s"
        "        0         0         0          0",
    ]
    assert sessions_table([]) == (
        "ID  CLIENT  POOL  SERVER  ROUTE  AGE  MSGS IN  MSGS OUT  BYTES IN  BYTES OUT"
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_adminclient_an_unreachable_endpoint_is_one_sentence() -> None:
    port = closed_port()
    with pytest.raises(AdminError) as failed:
        request(Endpoint("127.0.0.1", port, "secret-token"), "/sessions")
    assert str(failed.value) == (
        f"cannot reach the admin endpoint at http://127.0.0.1:{port}: Connection refused"
    )


def test_adminclient_a_host_name_dns_cannot_encode_is_one_sentence() -> None:
    with pytest.raises(AdminError) as failed:
        request(Endpoint("a..b", 1, ""), "/sessions")
    sentence = str(failed.value)  # then the codec's words, which depend on Python's version
    assert sentence.startswith("cannot reach the admin endpoint at http://a..b:1: ")
    assert "\n" not in sentence


TOKEN = "0123456789abcdef-token"


async def test_adminclient_against_a_running_proxy(nursery: trio.Nursery, backend: Backend) -> None:
    config = proxy_config(backend.url, extra=f"admin: {{address: 127.0.0.1:0, token: {TOKEN}}}")
    admin = await start_with_admin(nursery, config)
    endpoint = Endpoint("127.0.0.1", admin.port, TOKEN)
    with trio.fail_after(CAP):
        async with connect(admin.running.url, origin=ORIGIN, proxy=None) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            query = SessionQuery(pool="main")
            (listed,) = await trio.to_thread.run_sync(list_sessions, endpoint, query)
            assert (listed.pool, listed.server, listed.messages_in) == ("main", backend.url, 1)
            for token, sentence in [
                ("", "401: this action needs the header Authorization: Bearer <admin.token>"),
                ("wrong", "403: wrong admin token"),
                (TOKEN, "404: no server 'ws://nowhere:1' in pool 'main'"),
            ]:
                asking = Endpoint("127.0.0.1", admin.port, token)
                with pytest.raises(AdminError) as refused:
                    await trio.to_thread.run_sync(act, asking, Undrain("main", "ws://nowhere:1"))
                assert str(refused.value) == f"the admin endpoint answered {sentence}"
            close = CloseSession(listed.id, 4000, "bye")
            line = await trio.to_thread.run_sync(act, endpoint, close)
            assert line == f"closing session {listed.id} with 4000 ('bye')"
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "bye")
