"""Affinity: which server a client belongs to, by a key from its request or a sticky cookie.

Invariants:
- Pure and deterministic: no process-local state (no `hash()`, no random salt), so every
  replica with the same configuration maps a key to the same server without talking.
- Hashing is weighted rendezvous (highest random weight): each (key, server) pair gets a score
  and the key goes to the best-scoring usable server. Removing a server moves only the keys it
  owned; adding one takes only the keys it now wins, about `weight / total` of them.
- A sticky cookie's value is a MAC of the server's identity under the pool's secret: a client
  can present only tokens the proxy gave out, and it learns no backend address from one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from typing import Final
from urllib.parse import parse_qsl

from wsproxy.handshake import Headers, UpgradeRequest

_TWO_TO_64: Final = float(2**64)


def request_key(hash_on: str, upgrade: UpgradeRequest, client_ip: str) -> str | None:
    """The value `hash_on` names in this request; None (or empty) when the request lacks it."""
    kind, _, name = hash_on.partition(":")
    value: str | None
    if kind == "ip":
        value = client_ip
    elif kind == "path":
        value = upgrade.target.split(b"?", 1)[0].decode("latin-1")
    elif kind == "header":
        found = [v for n, v in upgrade.headers if n == name.encode("latin-1")]
        value = b", ".join(found).decode("latin-1") if found else None
    elif kind == "cookie":
        value = cookie_value(upgrade.headers, name)
    else:  # query
        value = query_value(upgrade.target, name)
    return value or None


def cookie_value(headers: Headers, name: str) -> str | None:
    """The first value of cookie `name` in the request's `Cookie` headers."""
    wanted = name.encode("latin-1")
    for header, value in headers:
        if header != b"cookie":
            continue
        for pair in value.split(b";"):
            key, equals, found = pair.partition(b"=")
            if equals and key.strip() == wanted:
                return found.strip().strip(b'"').decode("latin-1")
    return None


def query_value(target: bytes, name: str) -> str | None:
    """The first value of query parameter `name` in a request target, percent-decoded."""
    _, question, query = target.decode("latin-1").partition("?")
    if not question:
        return None
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == name:
            return value
    return None


def rendezvous_score(key: bytes, server: str, weight: int) -> float:
    """The weighted rendezvous score of `server` for `key`: the highest score owns the key."""
    digest = hashlib.blake2b(server.encode() + b"\0" + key, digest_size=8).digest()
    uniform = (int.from_bytes(digest, "big") + 0.5) / _TWO_TO_64  # in (0, 1)
    return weight / -math.log(uniform)


def sticky_token(secret: bytes, server: str) -> str:
    """The cookie value naming `server`: 22 URL-safe characters, unforgeable without `secret`."""
    mac = hmac.new(secret, server.encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def set_cookie(name: str, token: str, *, secure: bool) -> tuple[bytes, bytes]:
    """The `Set-Cookie` header for the client's 101: a session cookie for the whole site."""
    attributes = "; Path=/; HttpOnly; SameSite=Lax" + ("; Secure" if secure else "")
    return b"set-cookie", f"{name}={token}{attributes}".encode("latin-1")
