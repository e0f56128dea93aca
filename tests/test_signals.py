"""wsproxy/signals.py: the one reading of signals, driven through a memory channel."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import trio

from wsproxy.config import Config, parse_config
from wsproxy.signals import SIGNALS, ProxySignals, obey

CONFIG = parse_config(
    "listen: [{address: 127.0.0.1:0}]\nsecurity: {allowed_origins: ['*']}\n"
    "routes: [{path: /, pool: main}]\npools: {main: {servers: [ws://127.0.0.1:9]}}\n"
    "shutdown: {drain_timeout: 7s}\n",
    {},
)


@dataclass
class Recorder:
    """A process that notes what `obey` asks of it."""

    stopping: bool = False
    done: list[str] = field(default_factory=list)

    def drain(self, signum: signal.Signals) -> None:
        self.stopping = True
        self.done.append(f"drain {signum.name}")

    def stop_now(self, signum: signal.Signals) -> None:
        self.done.append(f"stop {signum.name}")

    def hang_up(self, reloads: trio.Nursery) -> None:
        self.done.append("reload")


async def _obeyed(process: Recorder | ProxySignals, *signums: int) -> None:
    """Run `obey` on `signums`, then on the end of the signals."""
    send, receive = trio.open_memory_channel[int](len(signums))
    async with send:
        for signum in signums:
            send.send_nowait(signum)
    await obey(receive, process)


def test_signals_are_the_three_a_process_acts_on() -> None:
    assert set(SIGNALS) == {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


@pytest.mark.parametrize(
    ("signums", "done"),
    [
        ((signal.SIGTERM,), ["drain SIGTERM"]),
        ((signal.SIGINT, signal.SIGTERM), ["drain SIGINT", "stop SIGTERM"]),
        (
            (signal.SIGTERM, signal.SIGINT, signal.SIGINT),
            ["drain SIGTERM", "stop SIGINT", "stop SIGINT"],
        ),
        ((signal.SIGHUP, signal.SIGHUP), ["reload", "reload"]),
        ((signal.SIGTERM, signal.SIGHUP), ["drain SIGTERM", "reload"]),  # the process says no
    ],
)
async def test_signals_obey_drains_then_stops_and_reloads_on_sighup(
    signums: tuple[int, ...], done: list[str]
) -> None:
    process = Recorder()
    await _obeyed(process, *signums)
    assert process.done == done


@dataclass
class FakeProxy:
    config: Config = CONFIG
    stopping: bool = False
    reloaded: list[Config] = field(default_factory=list)
    release: trio.Event = field(default_factory=trio.Event)

    def stop(self) -> None:
        self.stopping = True

    async def reload(self, load: Callable[[], Config]) -> bool:
        self.reloaded.append(load())
        await self.release.wait()
        return True


async def test_signals_proxy_drains_on_the_first_and_cancels_on_the_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    proxy = FakeProxy()
    with trio.CancelScope() as scope:
        await _obeyed(ProxySignals(proxy, scope, None), signal.SIGTERM, signal.SIGINT)
    assert proxy.stopping
    assert scope.cancel_called
    assert [r.getMessage() for r in caplog.records] == [
        "SIGTERM: draining (sessions get up to 7s)",
        "SIGINT while draining: stopping now",
    ]
    assert {r.name for r in caplog.records} == {"wsproxy.server"}


async def test_signals_proxy_reload_runs_beside_the_signals_and_ends_with_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    proxy = FakeProxy()
    with trio.CancelScope() as scope:
        await _obeyed(ProxySignals(proxy, scope, lambda: CONFIG), signal.SIGHUP, signal.SIGTERM)
    assert proxy.reloaded == [CONFIG]  # begun, and cancelled with obey: it never got released
    assert proxy.stopping  # the drain did not wait for the reload
    assert [r.getMessage() for r in caplog.records] == [
        "SIGHUP: reloading the configuration",
        "SIGTERM: draining (sessions get up to 7s)",
    ]


async def test_signals_proxy_without_a_file_ignores_sighup(
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = FakeProxy()
    await _obeyed(ProxySignals(proxy, trio.CancelScope(), None), signal.SIGHUP)
    assert proxy.reloaded == []
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "SIGHUP ignored: no configuration file to reload")
    ]
