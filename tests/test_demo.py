"""wsproxy/demo.py: the demo's configuration agrees with config.example.yaml, its page is served
as promised, and in headless Chromium the page's session echoes through the proxy."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Final

import h11
import pytest
import trio

from tests.helpers import ask, browser_page
from tests.test_cli import demo_args, demo_ports, started
from wsproxy.config import load_config
from wsproxy.demo import DemoPorts, demo_config, page, page_origin, respond, serve_page

EXAMPLE: Final = Path(__file__).parents[1] / "config.example.yaml"
CAP: Final = 10.0


def test_demo_config_is_the_examples_admin_routes_and_pools_on_loopback() -> None:
    """The example stays the documented file; the demo is it, on 127.0.0.1 with its page."""
    example = load_config(str(EXAMPLE), {})
    demo = demo_config(DemoPorts())
    assert demo.admin == example.admin
    assert demo.routes == example.routes
    assert demo.pools == example.pools
    assert [(x.host, x.port) for x in demo.listen] == [("127.0.0.1", example.listen[0].port)]
    assert demo.security.allowed_origins == (
        "http://127.0.0.1:8081",
        "http://localhost:8081",
    )
    for origin in demo.security.allowed_origins:  # the example names the demo page's origins
        assert origin in example.security.allowed_origins


def test_demo_config_follows_the_ports() -> None:
    ports = DemoPorts(proxy=1, page=2, admin=3, echoes=(4, 5))
    config = demo_config(ports)
    assert config.listen[0].address == "127.0.0.1:1"
    assert config.admin is not None
    assert config.admin.address == "127.0.0.1:3"
    assert config.security.allowed_origins == ("http://127.0.0.1:2", "http://localhost:2")
    assert [s.url for s in config.pools["default"].servers] == [
        "ws://127.0.0.1:4",
        "ws://127.0.0.1:5",
    ]
    assert [s.url for s in config.pools["chat"].servers] == ["ws://127.0.0.1:5"]
    assert page_origin(ports) == "http://127.0.0.1:2"


def test_demo_page_needs_nothing_from_elsewhere() -> None:
    html = page(DemoPorts(proxy=18080)).decode()
    assert 'const url = "ws://127.0.0.1:18080/";' in html
    assert "<script>" in html
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|@import|https?://", html)


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("GET", "/", 200),
        ("HEAD", "/", 200),
        ("GET", "/?from=readme", 200),
        ("GET", "/favicon.ico", 404),
        ("POST", "/", 405),
    ],
)
def test_demo_page_answers(method: str, target: str, status: int) -> None:
    request = h11.Request(method=method, target=target, headers=[("Host", "127.0.0.1")])
    answer = respond(request, b"<page>")
    assert answer[0] == status
    if status == 200:
        assert answer[1:] == ("text/html; charset=utf-8", b"<page>")


async def test_demo_page_responder_on_a_socket(nursery: trio.Nursery) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    nursery.start_soon(serve_page, listener, b"<p>the page</p>")
    port = listener.socket.getsockname()[1]
    with trio.fail_after(CAP):
        answer = await ask(port, "/")
        assert (answer.status, answer.body) == (200, b"<p>the page</p>")
        assert answer.headers["content-type"] == "text/html; charset=utf-8"
        assert (await ask(port, "/nothing")).status == 404
        assert (await ask(port, "/", "HEAD")).body == b""
        garbage = await trio.open_tcp_stream("127.0.0.1", port)
        async with garbage:
            await garbage.send_all(b"\x00 not http\r\n\r\n")
            assert await garbage.receive_some(1024) == b""
        assert (await ask(port, "/")).status == 200  # and it goes on


async def test_demo_page_echoes_through_the_proxy_in_chromium(tmp_path: Path) -> None:
    """The demo as a user runs it; the browser loads the page from the demo's page port, and
    the page's session goes through the proxy (which checks the page's Origin) to an echo."""
    ports = demo_ports()
    async with started(*demo_args(ports), cwd=tmp_path) as child:
        await child.stdout.until("Ctrl-C stops.")
        with trio.fail_after(60):
            async with browser_page(tmp_path) as browser:
                await browser.call("Page.navigate", url=f"http://127.0.0.1:{ports.page}/")
                await browser.until("document.querySelector('#state')?.textContent", "open")
                await browser.evaluate(
                    "document.querySelector('#message').value = 'hello from the page';"
                    "document.querySelector('#send').click()"
                )
                await browser.until(
                    "Array.from(document.querySelectorAll('#log li'), li => li.textContent)"
                    ".join('|')",
                    "sent: hello from the page|echo: hello from the page",
                )
        child.signal(signal.SIGINT)
        assert await child.exit_code() == 0
    assert "403" not in "\n".join(child.stderr.lines)
