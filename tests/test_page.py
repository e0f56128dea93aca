"""The status page in a real headless Chromium: the balance bars, the history chart, and the
marks of rebalancing and drains."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import trio
from websockets.trio.client import ClientConnection, connect

from tests.conftest import ORIGIN, Backend, proxy_config, start_backend
from tests.helpers import DevTools, browser_page
from tests.test_admin import start_with_admin
from tests.test_fleet import server
from wsproxy import __version__
from wsproxy.admin import ProcessStatus, serve_admin
from wsproxy.balancer import PoolStatus
from wsproxy.history import History, HistoryStatus, Sample
from wsproxy.page import PAGE
from wsproxy.servers import ServerStatus

CAP = 60.0


def test_page_is_one_document_that_fetches_nothing_but_status() -> None:
    assert "<script src" not in PAGE
    assert "<link" not in PAGE
    assert "@import" not in PAGE
    assert PAGE.count("fetch(") == 1
    assert 'fetch("/status"' in PAGE


def row(server: str) -> str:
    return f"document.querySelector('table.pool tr[data-server=\"{server}\"]')"


def bar(server: str, what: str) -> str:
    """A figure of the server's balance bar: sessions, expected (its share), or state."""
    return f"{row(server)}?.querySelector('.bar')?.dataset.{what}"


def chart(pool: str, what: str) -> str:
    return f"document.querySelector('svg.history[data-pool=\"{pool}\"]')?.dataset.{what}"


def counts(pool: str, server: str) -> str:
    """The server's sessions at each point of the chart, oldest first, as a JS array."""
    line = f'svg.history[data-pool="{pool}"] polyline[data-server="{server}"]'
    return f"(document.querySelector('{line}')?.dataset.counts ?? '').split(',')"


async def expect_bars(page: DevTools, figures: dict[str, tuple[int, float, str]]) -> None:
    """Each server's bar shows (sessions, expected sessions at its share, state)."""
    for name, (sessions, expected, state) in figures.items():
        await page.until(bar(name, "sessions"), str(sessions))
        await page.until(bar(name, "expected"), f"{expected:.2f}")
        await page.until(bar(name, "state"), state)


async def test_page_bars_and_chart_follow_sessions_between_two_servers_in_chromium(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Sessions through a real proxy to two backends: the bars show each server's count against
    its half, they move when sessions end on one server and new ones start, and the chart,
    sampled by the proxy, gets the points and keeps them across a reload of the page."""
    a, b = await start_backend(nursery), await start_backend(nursery)
    admin = await start_with_admin(nursery, proxy_config(a.url, b.url), History(0.25, 60.0))
    clients: dict[int, ClientConnection] = {}

    async def open_client(stack: AsyncExitStack, number: int) -> None:
        url = f"{admin.running.url}/?client={number}"
        clients[number] = await stack.enter_async_context(connect(url, origin=ORIGIN, proxy=None))

    def on(backend: Backend) -> list[int]:
        """The clients (still open) whose session went to `backend`."""
        numbers = [int(r.path.rpartition("=")[2]) for r in backend.requests]
        return [n for n in numbers if n in clients]

    with trio.fail_after(CAP):
        async with browser_page(tmp_path) as page, AsyncExitStack() as stack:
            await page.call("Page.navigate", url=f"http://127.0.0.1:{admin.port}/")
            await expect_bars(page, {a.url: (0, 0, "within"), b.url: (0, 0, "within")})
            for number in range(4):
                await open_client(stack, number)
            assert (len(on(a)), len(on(b))) == (2, 2)  # round robin
            await expect_bars(page, {a.url: (2, 2, "within"), b.url: (2, 2, "within")})
            await page.until(f"{counts('main', a.url)}.slice(-3).join()", "2,2,2")

            for number in on(a):  # the sessions on a end...
                await clients.pop(number).aclose()
            await expect_bars(page, {a.url: (0, 1, "within"), b.url: (2, 1, "over")})
            await page.until(f"{row(b.url)}.querySelector('.over').style.width !== '0%'", True)
            for number in (4, 5, 6):  # ...and new ones start, on both
                await open_client(stack, number)
            on_a, on_b = len(on(a)), len(on(b))
            assert on_a + on_b == 5
            await expect_bars(
                page,
                {
                    a.url: (on_a, 2.5, "within" if on_a <= 2.5 else "over"),
                    b.url: (on_b, 2.5, "within" if on_b <= 2.5 else "over"),
                },
            )
            await page.until(f"{counts('main', a.url)}.slice(-2).join()", f"{on_a},{on_a}")
            before = await drawn(page, a.url)

            # The history is the proxy's: a new page draws it at once, up to now.
            await page.call("Page.navigate", url="about:blank")
            await page.until("location.href", "about:blank")
            await page.call("Page.navigate", url=f"http://127.0.0.1:{admin.port}/")
            await page.until(f"{chart('main', 'samples')} !== undefined", True)
            after = await drawn(page, a.url)
    for seen in (before, after):  # 2 on a, later none, at last the new ones
        assert 0 in seen[seen.index(2) :], seen
        assert seen[-2:] == [on_a, on_a], seen
    assert len(after) >= len(before)  # the chart's first points are still there


async def drawn(page: DevTools, server: str) -> list[int]:
    seen = await page.evaluate(f"{counts('main', server)}.join()")
    assert isinstance(seen, str)
    return [int(count) for count in seen.split(",")]


# --- the figures rebalancing and drains add, from a view that has them ------------------------


def balanced(
    name: str, sessions: int, share: float, *, weight: int = 2, **changes: object
) -> ServerStatus:
    base = server(name, sessions=sessions, weight=weight)
    fields = {
        "share": share,
        "effective_weight": weight,
        "agent_weight": None,
        "draining": False,
        "drain_left": 0.0,
        **changes,
    }
    return replace(base, **fields)  # type: ignore[arg-type]


HISTORY = HistoryStatus(
    10.0,
    600.0,
    2000.0,
    (
        Sample(1980.0, {"chat": {"s1": 5, "s2": 5, "s3": 4}, "plain": {"p1": 1}}),
        Sample(1990.0, {"chat": {"s1": 7, "s2": 4, "s3": 2}}),
    ),
)


class FakeView:
    """An admin view with a pool that rebalances and drains, and one whose status has none of
    the new figures."""

    async def not_ready(self) -> str:
        return ""

    async def metrics(self) -> str:
        return ""

    async def status(self) -> ProcessStatus:
        chat = (
            balanced("s1", 9, 7.0),  # 7 is its share, 8.75 the tolerance's limit
            balanced("s2", 4, 7.0, effective_weight=1, agent_weight=1),
            balanced("s3", 1, 0.0, draining=True, drain_left=41.2),
            balanced("s4", 0, 0.0, listed=False),
        )
        plain = (
            server("p1", sessions=1, weight=1, share=1.0),
            server("p2", sessions=3, weight=3, share=3.0),
            server("p3", "down", sessions=0, weight=1, share=0.0),
        )
        return ProcessStatus(
            version=__version__,
            ready=True,
            not_ready_because="",
            draining=False,
            connections=18,
            sessions=18,
            pools=(
                PoolStatus("chat", "round_robin", 3, 14, True, 3, 0.25, chat),
                PoolStatus("plain", "round_robin", 2, 4, False, 0, None, plain),
            ),
            history=HISTORY,
        )


async def test_page_marks_rebalancing_drains_and_weights_in_chromium(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    await nursery.start(serve_admin, FakeView(), listener)
    port = listener.socket.getsockname()[1]
    chat = "document.querySelector('section.pool[data-pool=\"chat\"] h2')"
    with trio.fail_after(CAP):
        async with browser_page(tmp_path) as page:
            await page.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
            await page.until(
                f"{chat}?.querySelector('.badge.rebalancing')?.textContent",
                "rebalancing: 3 sessions moved",
            )
            await page.until(
                f"{chat}.querySelector('.badge.draining').textContent",
                "draining: s3 (42s left)",
            )
            await expect_bars(
                page,
                {
                    "s1": (9, 7, "overloaded"),  # beyond (1 + 25 %) of its share
                    "s2": (4, 7, "within"),
                    "s3": (1, 0, "overloaded"),  # draining: it has no share
                    "s4": (0, 0, "within"),
                },
            )
            field = "querySelector('[data-field={}]').textContent"
            assert await page.evaluate(f"{row('s3')}.{field.format('drain')}") == (
                "draining, 42s left"
            )
            assert await page.evaluate(f"{row('s2')}.{field.format('weight')}") == (
                "2, effective 1, agent 1"
            )
            assert await page.evaluate(f"{row('s1')}.{field.format('weight')}") == "2"
            assert await page.evaluate(f"{row('s4')}.{field.format('note')}") == (
                "removed; finishing its sessions"
            )
            assert await page.evaluate(chart("chat", "samples")) == "2"
            assert await page.evaluate(f"{counts('chat', 's1')}.join()") == "5,7,9"
            # A pool that does not rebalance: no tolerance, no badges.
            await expect_bars(
                page,
                {"p1": (1, 1, "within"), "p2": (3, 3, "within"), "p3": (0, 0, "within")},
            )
            assert await page.evaluate(chart("plain", "samples")) == "1"  # only one has it
            assert await page.evaluate(f"{counts('plain', 'p1')}.join()") == "1,1"
            plain = "document.querySelector('section.pool[data-pool=\"plain\"] h2')"
            assert await page.evaluate(f"{plain}.querySelectorAll('.badge').length") == 0
