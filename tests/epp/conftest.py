"""Endpoint-picker test helpers: a picker served on loopback and an Envoy emulator."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.epp import EnvoyEmulator, RunningPicker, serve_in_background
from sluicegate.gateway import GatewayConfig, parse_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

#: Endpoints of the test pools. Concurrency pools never contact their backends, so
#: nothing listens there; they are loopback addresses all the same.
A, B, C = "127.0.0.2:8000", "127.0.0.3:8000", "127.0.0.4:8000"
CHAT = "/v1/chat/completions"
BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hello there"}]})
#: Upper bound for any wait on observable state (never reached when green).
WAIT_S = 10.0


def make_config(
    backends: list[str] | None = None, *, max_in_flight: int = 100, **sections: Any
) -> GatewayConfig:
    """A one-pool concurrency config over `backends` (``ip:port``); sections merge in."""
    pool: dict[str, Any] = {
        "name": "default",
        "models": ["*"],
        "backends": [f"http://{b}" for b in (backends or [A])],
        "saturation": {"type": "concurrency", "max_in_flight": max_in_flight},
    }
    pool.update(sections.pop("pool", {}))
    doc: dict[str, Any] = {"server": {"host": "127.0.0.1", "port": 0}, "pools": [pool]}
    doc.update(sections)
    return parse_config(doc, source="test")


@contextlib.asynccontextmanager
async def stack(
    config: GatewayConfig | None = None, *, mode: str = "full-duplex", **options: Any
) -> AsyncIterator[tuple[RunningPicker, EnvoyEmulator]]:
    """A picker on loopback and an emulator connected to it."""
    async with (
        serve_in_background(config or make_config(), host="127.0.0.1", **options) as running,
        EnvoyEmulator(running.grpc_target, mode=mode) as envoy,
    ):
        yield running, envoy


async def eventually(predicate: Callable[[], bool], within: float = WAIT_S) -> None:
    """Wait until `predicate()` holds, checking every few ms; fail after `within` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def queued(running: RunningPicker, pool: str = "default") -> int:
    return running.picker.pools[pool].controller.statistics().queued_requests


def in_flight(running: RunningPicker, pool: str = "default") -> int:
    return running.picker.pools[pool].controller.statistics().in_flight


def backend_in_flight(running: RunningPicker) -> dict[str, int]:
    """In-flight count per endpoint (``ip:port``), over every controller."""
    detector = running.picker.pools["default"].detector
    return {url.removeprefix("http://"): b.in_flight for url, b in detector.backends.items()}


def body(**fields: Any) -> bytes:
    doc: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    doc.update(fields)
    return orjson.dumps(doc)
