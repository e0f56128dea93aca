"""wsproxy/adminapi.py: who may act, the listing of sessions and the actions, as pure data."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from wsproxy.adminapi import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    NOBODY,
    Action,
    BadRequest,
    CloseSession,
    Drain,
    Guard,
    SessionQuery,
    SessionRow,
    Undrain,
    action_body,
    action_done,
    action_target,
    action_unknown,
    describe,
    is_action,
    parse_action,
    parse_query,
    parse_sessions,
    query_target,
    refusal,
    select_sessions,
    sessions_document,
)

TOKEN = "0123456789abcdef-token"
GUARD = Guard(token=TOKEN)
SERVER = "ws://10.0.0.7:9000/chat?x=1 (10.0.0.7)"  # a URL with every character that needs care


# --- who may act -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [b"Bearer " + TOKEN.encode(), b"bearer " + TOKEN.encode(), b"BEARER  " + TOKEN.encode()],
)
def test_adminapi_the_right_bearer_token_may_act(header: bytes) -> None:
    assert refusal(GUARD, [header]) is None


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [b"Basic " + TOKEN.encode()],
        [b"Bearer"],
        [b"Bearer "],
        [TOKEN.encode()],
        [b"Bearer " + TOKEN.encode()] * 2,
    ],
)
def test_adminapi_no_bearer_credentials_is_401(headers: list[bytes]) -> None:
    assert refusal(GUARD, headers) == (
        401,
        "this action needs the header Authorization: Bearer <admin.token>",
    )


@pytest.mark.parametrize(
    "token", [b"", b"x", TOKEN.encode()[:-1], TOKEN.encode() + b"x", TOKEN.upper().encode()]
)
def test_adminapi_a_wrong_token_is_403(token: bytes) -> None:
    assert refusal(GUARD, [b"Bearer x" + token]) == (403, "wrong admin token")


@pytest.mark.parametrize("headers", [[], [b"Bearer " + TOKEN.encode()], [b"Bearer "]])
def test_adminapi_without_a_configured_token_every_action_is_403(headers: list[bytes]) -> None:
    assert refusal(NOBODY, headers) == (
        403,
        "admin actions are disabled: admin.token is not configured",
    )


def test_adminapi_a_trusted_listener_takes_every_action() -> None:
    assert refusal(Guard(trusted=True), []) is None
    assert refusal(Guard(token=TOKEN, trusted=True), [b"Bearer wrong"]) is None


# --- listing sessions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "parsed"),
    [
        (b"", SessionQuery()),
        (b"pool=chat", SessionQuery(pool="chat")),
        (b"pool=&server=&limit=", SessionQuery()),
        (b"limit=1", SessionQuery(limit=1)),
        (b"limit=10000&pool=a", SessionQuery(pool="a", limit=MAX_LIMIT)),
        (b"server=ws%3A%2F%2Fb%3A1%2F&pool=p+q", SessionQuery("p q", "ws://b:1/")),
        (b"server=%C3%A9", SessionQuery(server="\u00e9")),
    ],
)
def test_adminapi_parse_query(query: bytes, parsed: SessionQuery) -> None:
    assert parse_query(query) == parsed


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        (b"pools=a", "unknown parameter 'pools': /sessions takes pool, server and limit"),
        (b"pool=a&pool=b", "the parameter pool is given twice"),
        (b"limit=0", "limit must be a whole number from 1 to 10000, got '0'"),
        (b"limit=10001", "limit must be a whole number from 1 to 10000, got '10001'"),
        (b"limit=-1", "limit must be a whole number from 1 to 10000, got '-1'"),
        (b"limit=ten", "limit must be a whole number from 1 to 10000, got 'ten'"),
        (b"limit=%D9%A1", "limit must be a whole number from 1 to 10000, got '\u0661'"),
        (b"server=%FF", "the query must be percent-encoded UTF-8"),
        (b"server=\xc3\xa9", "the query must be percent-encoded UTF-8"),
    ],
)
def test_adminapi_parse_query_refuses_in_one_sentence(query: bytes, problem: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_query(query)
    assert str(refused.value) == problem


@pytest.mark.parametrize(
    "query",
    [SessionQuery(), SessionQuery("chat", SERVER, 7), SessionQuery(server="\u00e9&=+%", limit=2)],
)
def test_adminapi_query_target_reads_back_as_the_same_query(query: SessionQuery) -> None:
    path, _, text = query_target(query).partition("?")
    assert path == "/sessions"
    assert parse_query(text.encode("ascii")) == query


def row(id: str, age: float, pool: str = "p", server: str = "s") -> SessionRow:
    return SessionRow(id, "192.0.2.1:5000", "/", pool, server, age, 1, 2, 30, 40)


def test_adminapi_select_sessions_oldest_first_ties_by_id_filtered_and_limited() -> None:
    rows = [row("b", 5.0), row("a", 5.0), row("c", 9.0, pool="q"), row("d", 1.0, server="t")]
    assert [r.id for r in select_sessions(rows, SessionQuery())] == ["c", "a", "b", "d"]
    assert [r.id for r in select_sessions(rows, SessionQuery(pool="p"))] == ["a", "b", "d"]
    assert [r.id for r in select_sessions(rows, SessionQuery(server="t"))] == ["d"]
    assert [r.id for r in select_sessions(rows, SessionQuery("q", "t"))] == []
    assert [r.id for r in select_sessions(rows, SessionQuery(limit=2))] == ["c", "a"]
    assert DEFAULT_LIMIT == 1000


def test_adminapi_select_sessions_names_a_server_by_its_identity_or_its_url() -> None:
    rows = [
        row("a", 4.0, server="ws://app:9000 (10.0.0.5)"),
        row("b", 3.0, server="ws://app:9000 (10.0.0.6)"),
        row("c", 2.0, server="ws://10.0.0.7:9000"),
        row("d", 1.0, server="ws://app:900 (10.0.0.8)"),
    ]

    def ids(server: str) -> list[str]:
        return [r.id for r in select_sessions(rows, SessionQuery(server=server))]

    assert ids("ws://app:9000") == ["a", "b"]  # every address of a DNS-named server
    assert ids("ws://app:9000 (10.0.0.6)") == ["b"]
    assert ids("ws://10.0.0.7:9000") == ["c"]
    assert ids("ws://app:900") == ["d"]
    assert ids("ws://app") == ids("10.0.0.5") == ids("ws://app:9000 (10.0.0.") == []


def test_adminapi_sessions_document_reads_back() -> None:
    rows = [row("a", 1.5), row("b", 0.25)]
    document = sessions_document(rows)
    assert json.loads(document)["sessions"][0] == {
        "id": "a",
        "client": "192.0.2.1:5000",
        "route": "/",
        "pool": "p",
        "server": "s",
        "age": 1.5,
        "messages_in": 1,
        "messages_out": 2,
        "bytes_in": 30,
        "bytes_out": 40,
    }
    assert parse_sessions(document.decode()) == rows
    assert parse_sessions(sessions_document([]).decode()) == []


@pytest.mark.parametrize(
    "text",
    ["", "not json", "[]", '{"sessions": 1}', '{"sessions": [{"id": "a"}]}', "{}", "[" * 3000],
)
def test_adminapi_parse_sessions_of_something_else_is_none(text: str) -> None:
    assert parse_sessions(text) is None


# --- actions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "action"),
    [
        (b"/sessions/a-1/close", True),
        (b"/sessions//close", True),
        (b"/pools/p/servers/s/drain", True),
        (b"/pools/p/servers/s/undrain", True),
        (b"/sessions/a-1", False),
        (b"/sessions/a-1/close/", False),
        (b"/sessions/a-1/open", False),
        (b"/sessions", False),
        (b"/pools/p/servers/s/kill", False),
        (b"/pools/p/server/s/drain", False),
        (b"/pool/p/servers/s/drain", False),
        (b"/pools/p/servers/s/t/drain", False),
        (b"/status", False),
    ],
)
def test_adminapi_is_action(path: bytes, action: bool) -> None:
    assert is_action(path) is action


@pytest.mark.parametrize(
    ("path", "body", "action"),
    [
        (b"/sessions/a-1/close", b"", CloseSession("a-1", 1000, "")),
        (b"/sessions/a-1/close", b"  \n", CloseSession("a-1")),
        (b"/sessions/a-1/close", b"{}", CloseSession("a-1")),
        (b"/sessions/a%2D1/close", b'{"code": 4000}', CloseSession("a-1", 4000)),
        (
            b"/sessions/a-1/close",
            b'{"code": 1001, "reason": "\\u00e9t\\u00e9"}',
            CloseSession("a-1", 1001, "\u00e9t\u00e9"),
        ),
        (
            b"/sessions/x/close",
            json.dumps({"reason": "r" * 123}).encode(),
            CloseSession("x", 1000, "r" * 123),
        ),
        (b"/pools/chat/servers/ws%3A%2F%2Fa%3A1/drain", b"", Drain("chat", "ws://a:1", 30.0, 1012)),
        (b"/pools/chat/servers/s/drain", b'{"window": "60s"}', Drain("chat", "s", 60.0)),
        (
            b"/pools/chat/servers/s/drain",
            b'{"window": 2.5, "code": 1013}',
            Drain("chat", "s", 2.5, 1013),
        ),
        (b"/pools/chat/servers/s/drain", b'{"window": 0}', Drain("chat", "s", 0.0)),
        (b"/pools/chat/servers/s/undrain", b"", Undrain("chat", "s")),
        (b"/pools/chat/servers/s/undrain", b"{}", Undrain("chat", "s")),
    ],
)
def test_adminapi_parse_action(path: bytes, body: bytes, action: Action) -> None:
    assert parse_action(path, body) == action


@pytest.mark.parametrize(
    ("path", "body", "problem"),
    [
        (b"/sessions/a/close", b"{", "the body is not JSON"),
        (b"/sessions/a/close", b"\xff", "the body is not JSON"),
        (b"/sessions/a/close", b"[" * 3000, "the body is not JSON"),  # deeper than Python goes
        (b"/pools/p/servers/s/drain", b'{"code": ' + b"[" * 4000, "the body is not JSON"),
        (b"/sessions/a/close", b"[1000]", "the body must be a JSON object"),
        (
            b"/sessions/a/close",
            b'{"window": 1}',
            "unknown field 'window': this action takes only code, reason",
        ),
        (
            b"/pools/p/servers/s/undrain",
            b'{"code": 1000}',
            "unknown field 'code': this action takes no fields",
        ),
        (b"/sessions//close", b"", "the session id in the path is empty"),
        (b"/pools//servers/s/drain", b"", "the pool in the path is empty"),
        (
            b"/pools/p/servers/%ff/drain",
            b"",
            "the server in the path must be percent-encoded UTF-8",
        ),
        (
            b"/pools/p/servers/\xc3\xa9/drain",
            b"",
            "the server in the path must be percent-encoded UTF-8",
        ),
        (
            b"/sessions/x/close",
            json.dumps({"reason": "\u00e9" * 62}).encode(),
            "reason must be a string of at most 123 bytes of UTF-8",
        ),
        (
            b"/sessions/x/close",
            b'{"reason": 5}',
            "reason must be a string of at most 123 bytes of UTF-8",
        ),
        (b"/sessions/x/close", b'{"reason": "\\ud800"}', "reason must be valid Unicode"),
        (
            b"/pools/p/servers/s/drain",
            b'{"window": "-1s"}',
            "window: must not be negative, got '-1s'",
        ),
        (
            b"/pools/p/servers/s/drain",
            b'{"window": "soon"}',
            "window: expected a duration like 250ms, 5s, 2m or 1h, got 'soon'",
        ),
    ],
)
def test_adminapi_parse_action_refuses_in_one_sentence(
    path: bytes, body: bytes, problem: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_action(path, body)
    assert str(refused.value) == problem


@pytest.mark.parametrize(
    "code",
    ['"1000"', "true", "1000.0", "null", "999", "1004", "1005", "1006", "1015", "2999", "5000"],
)
@pytest.mark.parametrize("path", [b"/sessions/x/close", b"/pools/p/servers/s/drain"])
def test_adminapi_a_code_that_may_not_be_sent_is_refused(path: bytes, code: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_action(path, b'{"code": %s}' % code.encode())
    assert str(refused.value) == (
        f"code must be a close code that may be sent (1000-1003, 1007-1014, 3000-4999), got {code}"
    )


@pytest.mark.parametrize("code", [1000, 1003, 1007, 1014, 3000, 4999])
def test_adminapi_every_code_that_may_be_sent_is_taken(code: int) -> None:
    assert parse_action(b"/sessions/x/close", b'{"code": %d}' % code) == CloseSession("x", code)


ACTIONS = [
    CloseSession("ab12-3f"),
    CloseSession("weird/id?#%", 4000, "bye \u00e9\n"),
    Drain("chat", SERVER),
    Drain("p q/r", SERVER, 0.25, 1013),
    Undrain("chat", SERVER),
]


@pytest.mark.parametrize("action", ACTIONS)
def test_adminapi_action_target_and_body_read_back_as_the_same_action(action: Action) -> None:
    target = action_target(action)
    assert target.isascii()
    assert "?" not in target
    assert "#" not in target
    path = target.encode()
    assert is_action(path)
    assert parse_action(path, action_body(action)) == action


def test_adminapi_what_an_action_answers_and_says() -> None:
    close = CloseSession("a-1", 4000, "bye")
    assert json.loads(action_done(close)) == {"closing": "a-1", "code": 4000, "reason": "bye"}
    drain = Drain("chat", "ws://a:1", 60.0, 1012)
    assert json.loads(action_done(drain)) == {
        "pool": "chat",
        "server": "ws://a:1",
        "window": 60.0,
        "code": 1012,
        "draining": True,
    }
    undrain = Undrain("chat", "ws://a:1")
    assert json.loads(action_done(undrain)) == {
        "pool": "chat",
        "server": "ws://a:1",
        "draining": False,
    }
    assert action_unknown(close) == "no live session 'a-1'"
    assert action_unknown(drain) == action_unknown(undrain) == "no server 'ws://a:1' in pool 'chat'"
    assert describe(close) == "closing session a-1 with 4000 ('bye')"
    assert describe(replace(close, reason="")) == "closing session a-1 with 4000"
    assert (
        describe(drain) == "draining ws://a:1 in pool chat: its sessions closed with 1012 over 60s"
    )
    assert describe(undrain) == "ws://a:1 in pool chat takes new sessions again"
