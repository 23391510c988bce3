"""Passive backend health: reading upstream failures, probing out-of-service backends,
and the one retry of a request whose connect failed.

The detector keeps the state (see `_saturation`); this module does the I/O around it.
Probes are event-driven: a backend taken out of service arms one timer for its next
probe, and nothing runs for healthy backends.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, final

import aiohttp

import sluicegate as sg

from ._errors import GatewayError
from ._http1 import ConnectError, ConnectionBroken
from ._saturation import binding_of
from ._upstream import KIND_STATUS, UpstreamFailure

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sluicegate import Ticket

    from ._saturation import Backend, FailureKind, _PoolDetector

__all__ = ["HealthProbes", "failure_kind", "relay_with_retry"]

_log = logging.getLogger("sluicegate.gateway")


def failure_kind(exc: BaseException) -> FailureKind | None:
    """What an upstream failure says about the backend's health; None: nothing.

    The relay answers every upstream failure before the response started as a 502
    `GatewayError` raised while handling the `UpstreamFailure` that maps the upstream
    client's exception (its context): a connect error, or a reset (the connection closed or
    failed under the request, or the body was cut short); its kind ``status_5xx`` is
    the backend's own 5xx answer (as is a 502 without context). Timeouts say the
    backend is slow, not dead, and do not count.
    """
    if not isinstance(exc, GatewayError) or exc.status != 502:
        return None
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, UpstreamFailure):  # the relay's mapped failure
        if cause.kind == KIND_STATUS:
            return "status"
        inner = cause.cause
        cause = inner if isinstance(inner, BaseException) else None
    if isinstance(cause, ConnectError | aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(
        cause,
        ConnectionBroken  # closed, reset, or invalid HTTP (ProtocolError)
        | aiohttp.ServerDisconnectedError
        | aiohttp.ClientOSError
        | aiohttp.ClientPayloadError,
    ):
        return "reset"
    if cause is None:
        return "status"
    return None


async def relay_with_retry(
    detector: _PoolDetector,
    ticket: Ticket,
    attempt: Callable[[str], Awaitable[None]],
    started: Callable[[], bool],
) -> None:
    """Run `attempt(base_url)` on the ticket's backend and report the result to the
    detector. A failed connect (no byte was sent) is retried once on another usable
    backend, to which the ticket is re-bound.

    Raises:
        GatewayError: the attempt failed and could not be retried, or the retry failed.
    """
    binding = binding_of(ticket)
    if binding is None:  # no backend: only if the detector misbehaves
        raise sg.NoEndpointsError("the detector bound the request to no backend")
    backend = binding.backend
    try:
        await attempt(backend.url)
    except GatewayError as exc:
        kind = failure_kind(exc)
        if kind is None:
            raise
        detector.upstream_failed(backend, kind, exc.message)
        if kind != "connect" or started():
            raise
        other = detector.rebind(ticket)
        if other is None:
            raise
        _log.info("connect failed; retrying the request on another backend of the pool")
        await _attempt_reported(detector, other, attempt)
    else:
        detector.upstream_succeeded(backend)


async def _attempt_reported(
    detector: _PoolDetector, backend: Backend, attempt: Callable[[str], Awaitable[None]]
) -> None:
    try:
        await attempt(backend.url)
    except GatewayError as exc:
        if (kind := failure_kind(exc)) is not None:
            detector.upstream_failed(backend, kind, exc.message)
        raise
    detector.upstream_succeeded(backend)


@final
class HealthProbes:
    """Health probes of one pool's out-of-service backends: one timer each.

    Args:
        detector: the pool's detector; it asks for probes through `schedule`.
    """

    def __init__(self, detector: _PoolDetector) -> None:
        self._detector = detector
        self._session: aiohttp.ClientSession | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        detector.set_prober(self.schedule)

    def start(self, session: aiohttp.ClientSession) -> None:
        """Probes may run from now on, through `session`."""
        self._session = session

    def schedule(self, backend: Backend, delay: float) -> None:
        """Probe `backend` in `delay` seconds (replacing an earlier schedule)."""
        self.cancel(backend.url)
        loop = asyncio.get_running_loop()
        self._timers[backend.url] = loop.call_later(delay, self._launch, backend)

    def cancel(self, url: str) -> None:
        """Forget a backend's pending probe (it left the pool)."""
        timer = self._timers.pop(url, None)
        if timer is not None:
            timer.cancel()

    def _launch(self, backend: Backend) -> None:
        self._timers.pop(backend.url, None)
        if self._session is None or self._detector.backends.get(backend.url) is not backend:
            return
        task = asyncio.get_running_loop().create_task(self._probe(self._session, backend))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe(self, session: aiohttp.ClientSession, backend: Backend) -> None:
        health = self._detector.health
        timeout = aiohttp.ClientTimeout(total=health.probe_timeout)
        try:
            async with session.get(backend.url + health.probe_path, timeout=timeout) as resp:
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._detector.probe_failed(backend, type(exc).__name__)
            return
        # Any answer below 500 means the server is up; vLLM answers 200 when its engine
        # is healthy and 5xx when it died. A server without the route answers 404.
        if status < 500:
            _log.info("backend=%s passed its health probe; back in service", backend.url)
            self._detector.probe_succeeded(backend)
        else:
            self._detector.probe_failed(backend, f"HTTP {status}")

    async def aclose(self) -> None:
        """Cancel every pending probe and wait for running ones to end."""
        for url in list(self._timers):
            self.cancel(url)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
