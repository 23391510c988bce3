"""Scraping backends' Prometheus /metrics: one loop per backend, every `scrape_interval`.

This is the one periodic task in the gateway, and it is inherent: model servers publish
load only as metrics to be pulled. Each loop is a task its `Pool` starts, keeps a
reference to and cancels when the backend leaves the pool or the gateway stops
(`Pool.stop_scraping` waits for them to end). A slow scrape delays only its own backend,
and never causes a burst of catch-up scrapes.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Final, TypeAlias

import aiohttp

from ._saturation import BackendMetrics

if TYPE_CHECKING:
    from ._adaptive import AdaptiveDetector
    from ._saturation import Backend, UtilizationDetector

    #: Detectors that read backends' metrics.
    Scraped: TypeAlias = UtilizationDetector | AdaptiveDetector

__all__ = ["parse_metrics", "scrape_forever"]

_log = logging.getLogger("sluicegate.gateway")

_WAITING: Final = (b"vllm:num_requests_waiting", b"sglang:num_queue_reqs")
_RUNNING: Final = (b"vllm:num_requests_running", b"sglang:num_running_reqs")
_KV: Final = (b"vllm:kv_cache_usage_perc", b"vllm:gpu_cache_usage_perc", b"sglang:token_usage")
# One regex pass finds only the series we need: vLLM's /metrics runs to ~100 kB of
# histograms, and scanning it line by line in Python would cost far more.
_SERIES: Final = re.compile(
    rb"^(" + b"|".join(re.escape(n) for n in (*_WAITING, *_RUNNING, *_KV)) + rb")"
    rb"(?:\{[^\n]*\})?[ \t]+([^ \t\r\n]+)",
    re.MULTILINE,
)


class _NoMetricsError(Exception):
    """The backend answers, but has no metrics at the configured path."""


def parse_metrics(text: bytes) -> BackendMetrics:
    """Extract waiting, running and KV-cache usage from a Prometheus text exposition.

    Series with several label sets (several models on one server) are summed for the
    queue counts; the KV-cache figure is the highest one.

    Raises:
        ValueError: no vLLM or SGLang load series is present, or a value is not a number.
    """
    waiting = running = kv = 0.0
    found_load = False
    for match in _SERIES.finditer(text):
        name, value = match.group(1), float(match.group(2))
        if name in _WAITING:
            waiting += value
            found_load = True
        elif name in _RUNNING:
            running += value
        else:
            kv = max(kv, value)
            found_load = True
    if not found_load:
        raise ValueError("no vLLM or SGLang queue/KV-cache metrics in the response")
    return BackendMetrics(waiting, running, kv)


async def _scrape_once(session: aiohttp.ClientSession, detector: Scraped, backend: Backend) -> None:
    settings = detector.settings
    timeout = aiohttp.ClientTimeout(total=settings.scrape_timeout or settings.staleness)
    epoch = detector.scrape_started(backend)
    try:
        async with session.get(backend.url + settings.metrics_path, timeout=timeout) as resp:
            if resp.status == 404:
                raise _NoMetricsError(
                    f"{settings.metrics_path} answered HTTP 404: a wrong backend URL or "
                    "metrics_path?"
                )
            if resp.status != 200:
                raise ValueError(f"/metrics answered HTTP {resp.status}")
            metrics = parse_metrics(await resp.read())
    except aiohttp.ClientConnectorError as exc:
        _record_failure(detector, backend, f"unreachable: {exc}", reachable=False)
    except _NoMetricsError as exc:
        # Never scoreable: under fail-closed (or last-known without figures) it could
        # never take a request, so it is no endpoint rather than a 30 s wait. fail-open
        # serves such a backend as free, as it always did, and an adaptive pool needs no
        # metrics at all (time to first token is its signal).
        policy_from = getattr(detector, "thresholds", None) or settings  # utilization
        usable = getattr(policy_from, "stale_policy", "fail-open") == "fail-open"
        _record_failure(detector, backend, str(exc), reachable=usable)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        _record_failure(detector, backend, f"scrape failed: {exc!r}", reachable=True)
    else:
        detector.scrape_succeeded(backend, metrics, epoch)


def _record_failure(detector: Scraped, backend: Backend, error: str, *, reachable: bool) -> None:
    # Log transitions only: a dead backend would otherwise log 20 lines a second.
    if backend.last_error is None or backend.reachable != reachable:
        _log.warning("backend=%s %s", backend.url, error)
    detector.scrape_failed(backend, error, reachable=reachable)


async def scrape_forever(
    session: aiohttp.ClientSession, detector: Scraped, backend: Backend
) -> None:
    """Scrape `backend` every `detector.settings.scrape_interval` until cancelled."""
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        try:
            await _scrape_once(session, detector, backend)
        except Exception:  # a bug here must not stop scraping, nor the gateway
            _log.exception("scraping %s failed unexpectedly", backend.url)
        next_at += detector.settings.scrape_interval
        now = loop.time()
        if next_at < now:
            next_at = now
        await asyncio.sleep(next_at - now)
