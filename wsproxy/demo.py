"""`wsproxy demo`: two echo backends, the proxy in front of them and a page that opens a session
from a browser, all on 127.0.0.1 and configured from the package itself (no file needed).

Invariants:
- The proxy's configuration is `demo_config(ports)`: config.example.yaml's admin address, routes
  and pools (the demo's echo backends are the example's servers), listening on 127.0.0.1 and
  allowing the page's origins. tests/test_demo.py checks that the two agree, so the example
  stays the one documented file and the demo cannot drift from it.
- The page is served by a small HTTP responder of its own (`http1`), as the proxy's ports answer
  plain HTTP with 426: GET or HEAD `/` gets the page, other paths 404, other methods 405, one
  request per connection. The page is one HTML document with its script inline: it loads
  nothing from anywhere else.
- What the demo prints is what it bound: addresses, the page's URL and a client command that
  needs nothing but wsproxy (`wsproxy client`).
"""

from __future__ import annotations

import functools
import logging
import signal
from dataclasses import dataclass
from typing import Final

import h11
import trio

from wsproxy.config import Config, parse_config
from wsproxy.echo import serve_echo
from wsproxy.http1 import answer, next_event
from wsproxy.listening import ListenError, accept_forever, open_listeners
from wsproxy.server import Proxy

log = logging.getLogger(__name__)

HOST: Final = "127.0.0.1"
REQUEST_TIMEOUT: Final = 10.0


@dataclass(frozen=True, slots=True)
class DemoPorts:
    """The demo's ports on 127.0.0.1; the defaults are config.example.yaml's."""

    proxy: int = 8080
    page: int = 8081
    admin: int = 9090
    echoes: tuple[int, int] = (9001, 9002)


def demo_yaml(ports: DemoPorts) -> str:
    """The demo's configuration file, as text."""
    first, second = ports.echoes
    page = f"{HOST}:{ports.page}"
    return f"""\
listen:
  - address: {HOST}:{ports.proxy}
admin:
  address: {HOST}:{ports.admin}
security:
  allowed_origins: ["http://{page}", "http://localhost:{ports.page}"]
routes:
  - {{host: chat.example.com, path: /chat, pool: chat}}
  - {{path: /, pool: default}}
pools:
  default:
    servers:
      - ws://{HOST}:{first}
      - {{url: "ws://{HOST}:{second}", weight: 2}}
    health_check: {{type: websocket}}
    rebalance: {{}}
  chat:
    balance: hash
    hash_on: query:user
    servers: ["ws://{HOST}:{second}"]
    retries: 1
shutdown:
  drain_timeout: 5s    # a browser tab keeps its session open: Ctrl-C should not wait 30 s
  close_window: 1s
"""


def demo_config(ports: DemoPorts) -> Config:
    return parse_config(demo_yaml(ports), {})


def page_origin(ports: DemoPorts) -> str:
    return f"http://{HOST}:{ports.page}"


def client_command(ports: DemoPorts) -> str:
    return f"wsproxy client ws://{HOST}:{ports.proxy}/ --origin {page_origin(ports)}"


def announcement(ports: DemoPorts) -> str:
    """What the demo prints once everything listens."""
    echoes = ", ".join(f"{HOST}:{port}" for port in ports.echoes)
    return (
        f"\nwsproxy demo: echo backends on {echoes}; the proxy on {HOST}:{ports.proxy}.\n"
        f"Open {page_origin(ports)}/ in a browser: the page opens a session through the proxy\n"
        "and shows the echo of what you type. Or, in a terminal (a line per message, Ctrl-D\n"
        "ends; `python -m wsproxy client ...` works too):\n"
        f"  {client_command(ports)}\n"
        f"Status page: http://{HOST}:{ports.admin}/\n"
        "Ctrl-C stops.\n"
    )


def page(ports: DemoPorts) -> bytes:
    """The demo page: it opens a session to the proxy and echoes what is typed."""
    return _PAGE.replace("%URL%", f"ws://{HOST}:{ports.proxy}/").encode()


async def run_demo(ports: DemoPorts) -> None:
    """Serve the demo until SIGINT or SIGTERM (the proxy drains; a second signal stops it)."""
    config = demo_config(ports)
    proxy = Proxy(config)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        page_listener = await _listen("the demo page's address", ports.page)
        async with page_listener, trio.open_nursery() as nursery:  # closed if a bind fails
            for port in ports.echoes:
                await nursery.start(serve_echo, HOST, port)
            listeners, admin = await open_listeners(config)
            nursery.start_soon(serve_page, page_listener, page(ports))
            print(announcement(ports), flush=True)
            nursery.start_soon(proxy.obey, signals, nursery.cancel_scope)
            await proxy.serve(listeners, admin=admin)
            nursery.cancel_scope.cancel()


async def _listen(what: str, port: int) -> trio.SocketListener:
    try:
        return (await trio.open_tcp_listeners(port, host=HOST))[0]
    except OSError as exc:
        raise ListenError(f"cannot listen on {what} {HOST}:{port}: {exc.strerror or exc}") from None


async def serve_page(listener: trio.SocketListener, body: bytes) -> None:
    """Answer every connection on `listener` with `body` at `/`, until cancelled; then close
    `listener`."""
    async with listener, trio.open_nursery() as handlers:
        await accept_forever(listener, handlers, functools.partial(_answer, page_body=body), "page")


def respond(request: h11.Request, body: bytes) -> tuple[int, str, bytes]:
    """(status, content type, body) for one request to the page's address."""
    if request.method not in (b"GET", b"HEAD"):
        return 405, "text/plain; charset=utf-8", b"only GET and HEAD\n"
    if request.target.split(b"?")[0] != b"/":
        return 404, "text/plain; charset=utf-8", b"not found: the demo page is at /\n"
    return 200, "text/html; charset=utf-8", body


async def _answer(stream: trio.SocketStream, page_body: bytes) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        with trio.move_on_after(REQUEST_TIMEOUT):
            event = await next_event(stream, conn)
            if not isinstance(event, h11.Request):
                return
            status, content_type, body = respond(event, page_body)
            head = event.method == b"HEAD"
            extra = ((b"cache-control", b"no-store"),)
            await stream.send_all(
                answer(status, content_type.encode(), body, extra=extra, head=head)
            )
    except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


_PAGE: Final = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>wsproxy demo</title>
<style>
  body { font: 16px/1.5 system-ui, sans-serif; max-width: 42em; margin: 2em auto; padding: 0 1em; }
  code, #log { font-family: ui-monospace, monospace; }
  #log { list-style: none; padding: 0; }
  #log .in { color: #064; } #log .out { color: #555; }
</style>
</head>
<body>
<h1>wsproxy demo</h1>
<p>This page opens a WebSocket session to <code id="url"></code>; the proxy relays it to an echo
backend, which sends every message back.</p>
<p>Session: <strong id="state">connecting</strong></p>
<form id="form">
  <input id="message" autocomplete="off" autofocus placeholder="a message">
  <button id="send">Send</button>
  <button id="reconnect" type="button">Reconnect</button>
</form>
<ul id="log"></ul>
<script>
"use strict";
const url = "%URL%";
const state = document.getElementById("state");
const log = document.getElementById("log");
const input = document.getElementById("message");
document.getElementById("url").textContent = url;
let ws = null;

function show(text, kind) {
  const item = document.createElement("li");
  item.className = kind;
  item.textContent = text;
  log.append(item);
}

function connect() {
  state.textContent = "connecting";
  ws = new WebSocket(url);
  ws.onopen = () => { state.textContent = "open"; };
  ws.onmessage = (event) => show("echo: " + event.data, "in");
  ws.onclose = (event) => {
    state.textContent = "closed (" + event.code + (event.reason ? " " + event.reason : "") + ")";
  };
}

document.getElementById("form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (ws && ws.readyState === WebSocket.OPEN && input.value) {
    ws.send(input.value);
    show("sent: " + input.value, "out");
    input.value = "";
  }
});
document.getElementById("reconnect").addEventListener("click", () => {
  if (ws) ws.close();
  connect();
});
connect();
</script>
</body>
</html>
"""
