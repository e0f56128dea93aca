"""Hash keys from requests, rendezvous scores, and sticky-cookie tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import upgrade_request
from wsproxy.affinity import (
    cookie_value,
    query_value,
    rendezvous_score,
    request_key,
    set_cookie,
    sticky_token,
)
from wsproxy.handshake import UpgradeRequest


def upgrade(target: bytes = b"/chat/room?user=ann", *extra: tuple[bytes, bytes]) -> UpgradeRequest:
    return upgrade_request(*extra, target=target)


@pytest.mark.parametrize(
    ("hash_on", "target", "headers", "key"),
    [
        ("ip", b"/", (), "192.0.2.7"),
        ("path", b"/chat/room?user=ann", (), "/chat/room"),
        ("path", b"/", (), "/"),
        ("header:x-user-id", b"/", ((b"X-User-Id", b"42"),), "42"),
        ("header:x-user-id", b"/", ((b"x-user-id", b"1"), (b"X-USER-ID", b"2")), "1, 2"),
        ("header:x-user-id", b"/", (), None),
        ("header:x-user-id", b"/", ((b"X-User-Id", b""),), None),
        ("cookie:sid", b"/", ((b"Cookie", b"a=1; sid=abc; b=2"),), "abc"),
        ("cookie:sid", b"/", ((b"Cookie", b"a=1"), (b"Cookie", b"sid=def")), "def"),
        ("cookie:sid", b"/", ((b"Cookie", b'sid="quoted"'),), "quoted"),
        ("cookie:sid", b"/", ((b"Cookie", b"sidx=1; xsid=2; sid"),), None),
        ("cookie:sid", b"/", (), None),
        ("query:user", b"/chat?user=ann&user=bob", (), "ann"),
        ("query:user", b"/chat?room=1&user=J%C3%BCrgen", (), "Jürgen"),
        ("query:user", b"/chat?user=", (), None),
        ("query:user", b"/chat?room=1", (), None),
        ("query:user", b"/chat", (), None),
    ],
)
def test_affinity_request_key(
    hash_on: str, target: bytes, headers: tuple[tuple[bytes, bytes], ...], key: str | None
) -> None:
    assert request_key(hash_on, upgrade(target, *headers), "192.0.2.7") == key


def test_affinity_cookie_value_reads_only_cookie_headers() -> None:
    headers = ((b"set-cookie", b"sid=1"), (b"cookie", b" sid = 2 "))
    assert cookie_value(headers, "sid") == "2"
    assert cookie_value((), "sid") is None


def test_affinity_query_value_keeps_blank_values_apart_from_missing() -> None:
    assert query_value(b"/?a=&b=1", "a") == ""
    assert query_value(b"/?b=1", "a") is None


@pytest.mark.parametrize(
    ("key", "server", "weight", "score"),
    [
        (b"key", "ws://a:1", 1, 0.3059916077616593),
        (b"key", "ws://b:1", 1, 1.9685679253278539),
        (b"user-42", "ws://10.0.0.1:9000", 3, 21.60611111221016),
    ],
)
def test_affinity_rendezvous_score_known_answers(
    key: bytes, server: str, weight: int, score: float
) -> None:
    """Pinned: replicas of two versions (a rolling deploy) must send a key to the same server,
    so any change to how a score is computed shows here."""
    assert rendezvous_score(key, server, weight) == pytest.approx(score, rel=1e-12)


def test_affinity_rendezvous_score_is_weighted_and_positive() -> None:
    assert rendezvous_score(b"key", "ws://a:1", 3) == 3 * rendezvous_score(b"key", "ws://a:1", 1)
    assert rendezvous_score(b"key", "ws://a:1", 1) != rendezvous_score(b"key", "ws://b:1", 1)
    assert rendezvous_score(b"key", "ws://a:1", 1) != rendezvous_score(b"yek", "ws://a:1", 1)
    assert rendezvous_score(b"key", "ws://a:1", 1) > 0


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (2, 1), (1, 3, 6)])
def test_affinity_rendezvous_winners_follow_the_weights(weights: tuple[int, ...]) -> None:
    """Over 20,000 keys each server wins about its weight's share (within 0.02): the hash is
    uniform and the weighting is the one whose winner is proportional to the weight."""
    servers = [f"ws://10.0.0.{n}:9000" for n in range(len(weights))]
    keys = 20_000
    wins = dict.fromkeys(servers, 0)
    for n in range(keys):
        key = f"user-{n}".encode()
        best = max(zip(servers, weights, strict=True), key=lambda s: rendezvous_score(key, *s))
        wins[best[0]] += 1
    for server, weight in zip(servers, weights, strict=True):
        assert wins[server] / keys == pytest.approx(weight / sum(weights), abs=0.02)


def test_affinity_scores_and_tokens_are_the_same_in_another_process() -> None:
    """Nothing process-local (hash() and its seed, random salts) goes into a score or token."""
    inputs = [("user-1", "ws://10.0.0.1:9000"), ("user-2", "ws://app:9000 (10.0.0.2)")]
    code = (
        "import json, sys\n"
        "from wsproxy.affinity import rendezvous_score, sticky_token\n"
        "pairs = json.loads(sys.argv[1])\n"
        "print(json.dumps([[rendezvous_score(k.encode(), s, 2), sticky_token(b'secret', s)]"
        " for k, s in pairs]))\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(inputs)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    here = [[rendezvous_score(k.encode(), s, 2), sticky_token(b"secret", s)] for k, s in inputs]
    assert json.loads(out) == here


def test_affinity_sticky_token_needs_the_secret_and_hides_the_address() -> None:
    token = sticky_token(b"0123456789abcdef", "ws://10.0.0.5:9000")
    # Pinned: with a configured secret, cookies given out before an upgrade still stick after it.
    assert token == "az4CuPk3AqYOKlLgYAj5gw"
    assert len(token) == 22
    assert token != sticky_token(b"another secret!!", "ws://10.0.0.5:9000")
    assert token != sticky_token(b"0123456789abcdef", "ws://10.0.0.6:9000")
    assert "10.0.0.5" not in token
    assert all(c.isalnum() or c in "-_" for c in token)


@pytest.mark.parametrize(
    ("secure", "value"),
    [
        (False, b"sticky=tok; Path=/; HttpOnly; SameSite=Lax"),
        (True, b"sticky=tok; Path=/; HttpOnly; SameSite=Lax; Secure"),
    ],
)
def test_affinity_set_cookie(secure: bool, value: bytes) -> None:
    assert set_cookie("sticky", "tok", secure=secure) == (b"set-cookie", value)
