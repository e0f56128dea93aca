"""TLS contexts: wss:// terminated on a listener, and wss:// spoken to a pool's servers.

Invariants:
- Contexts are built when a configuration is loaded or reloaded, never per connection, so a
  reload re-reads every certificate and key, and a connection never waits on a file.
- A file that cannot be read, or a certificate that does not match its key, is a `TLSError`
  whose message is one sentence naming the file and the setting; `contexts_for` gathers them
  all into one `ConfigError`, as a bad configuration is reported.
- Both directions speak TLS 1.2 or later. Towards servers the certificate is verified against
  the pool's `ca` (the system's by default) and the URL's host name, which is also the SNI,
  unless the pool sets `verify: false`.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path

from wsproxy.config import BackendTLS, Config, ConfigError, ListenerTLS

_VERSIONS: Mapping[str, ssl.TLSVersion] = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


class TLSError(Exception):
    """A certificate, key or CA file of the configuration is unusable."""


def listener_context(tls: ListenerTLS, where: str) -> ssl.SSLContext:
    """The server side of a listener's TLS; `where` names the setting in messages."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[tls.min_version]
    context.options |= ssl.OP_NO_RENEGOTIATION  # a client-driven CPU sink, and never needed
    context.set_alpn_protocols(["http/1.1"])
    _load_pair(context, tls.cert, tls.key, where)
    return context


def backend_context(tls: BackendTLS | None, where: str) -> ssl.SSLContext:
    """The client side towards a pool's wss:// servers."""
    tls = tls or BackendTLS()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if tls.verify and tls.ca is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    elif tls.verify and tls.ca is not None:
        _readable(tls.ca, f"{where}.ca")
        try:
            context.load_verify_locations(cafile=tls.ca)
        except ssl.SSLError as exc:
            raise TLSError(f"{where}.ca: {tls.ca} holds no PEM certificate ({_why(exc)})") from None
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.cert is not None and tls.key is not None:
        _load_pair(context, tls.cert, tls.key, where)
    return context


def contexts_for(config: Config) -> tuple[list[ssl.SSLContext | None], dict[str, ssl.SSLContext]]:
    """Every context `config` needs: one per listener (None for plain ones), and one per pool
    that has wss:// servers. Raises `ConfigError` naming every unusable file at once."""
    problems: list[str] = []

    def built(make: Callable[[], ssl.SSLContext]) -> ssl.SSLContext | None:
        try:
            return make()
        except TLSError as exc:
            problems.append(str(exc))
            return None

    listeners = [
        None
        if listen.tls is None
        else built(functools.partial(listener_context, listen.tls, f"listen[{index}].tls"))
        for index, listen in enumerate(config.listen)
    ]
    pools = {
        name: built(functools.partial(backend_context, pool.tls, f"pools.{name}.tls"))
        for name, pool in config.pools.items()
        if any(server.secure for server in pool.servers)
    }
    if problems:
        raise ConfigError(problems)
    return listeners, {name: context for name, context in pools.items() if context is not None}


def _load_pair(context: ssl.SSLContext, cert: str, key: str, where: str) -> None:
    for path in (cert, key):
        _readable(path, where)

    def no_password() -> str:  # else OpenSSL would ask for one on the terminal, blocking
        raise TLSError(f"{where}: {key} is encrypted: give wsproxy an unencrypted key")

    try:
        context.load_cert_chain(cert, key, password=no_password)
    except ssl.SSLError as exc:
        raise TLSError(
            f"{where}: {cert} and {key} are not a matching PEM certificate and key ({_why(exc)})"
        ) from None
    except OSError as exc:
        raise TLSError(f"{where}: cannot read {cert}: {_why(exc)}") from None


def _readable(path: str, where: str) -> None:
    try:
        Path(path).open("rb").close()
    except FileNotFoundError:
        raise TLSError(f"{where}: {path}: no such file") from None
    except OSError as exc:
        raise TLSError(f"{where}: cannot read {path}: {_why(exc)}") from None


def _why(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)
