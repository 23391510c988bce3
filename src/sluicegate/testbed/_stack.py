"""The system under test: simulated backends and a gateway, on loopback, in this process.

One stack per run, started fresh, so both runs begin from the same idle state and the
same simulator seeds. Everything shares the demo's event loop: the load is a few
thousand SSE events a second, a small share of one core (docs/sim.md, docs/gateway.md),
and one process makes Ctrl-C and port handling simple.

The "flow control off" gateway is the same gateway with a concurrency limit no run can
reach: the controller dispatches every request at once, in arrival order, so requests go
straight through the same relay and pile up in the engines' own FCFS queues, as with a
plain load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, final

from sluicegate.gateway import parse_config, serve_in_background
from sluicegate.sim import create_app, serve_many

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from sluicegate.gateway import Gateway, GatewayConfig
    from sluicegate.sim import SimApp, SimConfig

    from ._workload import Workload

__all__ = ["HOST", "Mode", "Sample", "Stack", "demo_gateway_config", "demo_stack"]

#: Everything listens on loopback only.
HOST: Final = "127.0.0.1"
#: `on`: flow control; `off`: the gateway passes requests straight through.
Mode = Literal["on", "off"]
#: A concurrency limit no demo run reaches: the controller never holds a request back.
_PASS_THROUGH_LIMIT: Final = 1_000_000
#: Seconds to wait for the gateway's first scrape of every backend.
_READY_TIMEOUT_S: Final = 5.0


def demo_gateway_config(
    mode: Mode, backends: Sequence[str], workload: Workload, *, port: int = 0
) -> GatewayConfig:
    """The gateway configuration of one run.

    With flow control, the pool runs on the gateway's defaults: no saturation, headroom or
    batch size is set, so each backend's limit is learned (`type: adaptive`), capacity is
    held back for the top band by its demand, and a waiting interactive request may pause a
    running batch stream (pause and resume). The rest wait at the gateway, the highest
    priority first and round-robin between tenants within a priority; sheddable (negative)
    work is capped at 40 queued. Without it, nothing is held back or preempted.

    Args:
        mode: ``on`` or ``off``.
        backends: the simulators' base URLs.
        workload: its objectives become the config's objectives.
        port: the gateway's port (0 = any free port).

    Raises:
        GatewayConfigError: a value is invalid.
    """
    band: dict[str, Any] = {"ordering": "fcfs", "fairness": "round-robin", "max_requests": 500}
    pool: dict[str, Any] = {"name": "demo", "models": ["*"], "backends": list(backends)}
    if mode == "off":
        # Nothing held back, nothing preempted: a plain load balancer with the same proxy.
        pool["saturation"] = {"type": "concurrency", "max_in_flight": _PASS_THROUGH_LIMIT}
        pool |= {"preemptive_requeue": False, "preemption": "off"}
    doc = {
        "server": {"host": HOST, "port": port, "drain_grace": 1},
        "pools": [pool],
        "flow_control": {
            "default_ttl": 20,
            "default_band": band,
            "negative_band": {**band, "max_requests": 40},
        },
        "objectives": [{"name": o.name, "priority": o.priority} for o in workload.objectives],
    }
    return parse_config(doc, source=f"demo config (flow control {mode})")


@final
@dataclass(frozen=True, slots=True)
class Sample:
    """The system at one moment of a run.

    Attributes:
        t: seconds since the run started.
        queued: requests waiting at the gateway, by priority.
        in_flight: requests dispatched and not yet finished, by priority.
        dispatched: requests dispatched since the stack started.
        engine_running: requests in the engines' batches, summed over backends.
        engine_waiting: requests waiting inside the engines, summed over backends.
        kv_usage: mean KV-cache usage of the engines, 0..1.
    """

    t: float
    queued: dict[int, int]
    in_flight: dict[int, int]
    dispatched: int
    engine_running: int
    engine_waiting: int
    kv_usage: float


@final
class Stack:
    """A running gateway and its simulated backends.

    Args:
        mode: flow control ``on`` or ``off``.
        gateway: the running gateway (its `url` is set).
        apps: the simulators.
    """

    def __init__(self, mode: Mode, gateway: Gateway, apps: Sequence[SimApp]) -> None:
        self.mode = mode
        self.gateway = gateway
        self.apps = tuple(apps)

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        assert self.gateway.url is not None
        return self.gateway.url

    def sample(self, t: float) -> Sample:
        """A snapshot of the gateway's bands and the engines, labelled with `t`."""
        queued: dict[int, int] = {}
        in_flight: dict[int, int] = {}
        dispatched = 0
        for pool in self.gateway.pools.values():
            stats = pool.controller.statistics()
            dispatched += stats.dispatched
            for priority, band in stats.bands.items():
                queued[priority] = queued.get(priority, 0) + band.queued_requests
                in_flight[priority] = in_flight.get(priority, 0) + band.in_flight
        engines = [app.engine.statistics() for app in self.apps]
        return Sample(
            t=t,
            queued=queued,
            in_flight=in_flight,
            dispatched=dispatched,
            engine_running=sum(e.running for e in engines),
            engine_waiting=sum(e.waiting for e in engines),
            kv_usage=sum(e.kv_cache_usage for e in engines) / max(len(engines), 1),
        )

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no engine runs or queues anything; False if `timeout_s` passed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                for app in self.apps:
                    await app.engine.wait_statistics(lambda s: s.running == 0 and s.waiting == 0)
                return True
        return False


@contextlib.asynccontextmanager
async def demo_stack(
    mode: Mode, *, backends: int, sim: SimConfig, workload: Workload, port: int = 0, seed: int = 0
) -> AsyncIterator[Stack]:
    """Start `backends` simulators and a gateway in front of them; stop all on exit.

    Args:
        mode: flow control ``on`` or ``off``.
        backends: how many simulators.
        sim: their configuration (simulator ``i`` is seeded ``seed + i``).
        workload: gives the gateway its objectives.
        port: the gateway's port (0 = any free port); simulators take free ports.
        seed: the simulators' base seed.

    Raises:
        OSError: a port cannot be bound.
    """
    apps = [create_app(sim.replace(seed=seed + i)) for i in range(backends)]
    async with serve_many(apps, HOST, [0] * backends) as urls:
        config = demo_gateway_config(mode, urls, workload, port=port)
        async with serve_in_background(config) as gateway:
            yield Stack(mode, gateway, apps)
