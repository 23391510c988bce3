"""Gateway test helpers: a scriptable upstream, loopback serving, and config builders."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.asgi import Receive, Scope, Send, listen, serving, url_of, uvicorn_server
from sluicegate.gateway import GatewayConfig, parse_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

#: Upper bound for any wait on observable state in these tests (never reached when green).
WAIT_S = 10.0


async def eventually(predicate: Callable[[], bool], within: float = WAIT_S) -> None:
    """Wait until `predicate()` holds, checking every few ms; fail after `within` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


class FakeUpstream:
    """A raw-ASGI OpenAI-ish backend whose behaviour tests script.

    Attributes:
        requests: (path, headers, body) of every /v1 request received.
        active: requests being answered now.
        disconnects: requests whose client (the gateway) went away mid-answer.
        mode: "ok", "500" (answer 500), "abort" (close mid-stream).
        hold: while not None and not set, requests wait on it before answering.
        chunks / chunk_delay: shape of streamed answers.
        waiting / kv / metrics_status / metrics_hang: what /metrics reports.
        health_status / health_probes: what GET /health answers, and how often it was asked.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.active = 0
        self.disconnects = 0
        self.mode = "ok"
        self.hold: asyncio.Event | None = None
        self.chunks = 3
        self.chunk_delay = 0.0
        self.waiting = 0.0
        self.kv = 0.0
        self.metrics_status = 200
        self.metrics_hang = False
        self.metrics_scrapes = 0
        self.models = ["fake-model"]
        self.health_status = 200
        self.health_probes = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/metrics":
            await self._metrics(send)
            return
        if path == "/health":
            self.health_probes += 1
            await _send(send, self.health_status, b"")
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if path == "/v1/models":
            doc = {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]}
            await _send(send, 200, orjson.dumps(doc))
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append((path, headers, body))
        self.active += 1
        gone = asyncio.ensure_future(receive())
        try:
            await self._answer(scope, body, send, gone)
        finally:
            self.active -= 1
            if gone.done() and not gone.cancelled():
                self.disconnects += 1
            gone.cancel()

    async def _metrics(self, send: Send) -> None:
        self.metrics_scrapes += 1
        if self.metrics_hang:
            await asyncio.Event().wait()  # until the scraper gives up and disconnects
        text = (
            f'vllm:num_requests_waiting{{model_name="fake-model"}} {self.waiting}\n'
            f'vllm:num_requests_running{{model_name="fake-model"}} {self.active}\n'
            f'vllm:kv_cache_usage_perc{{model_name="fake-model"}} {self.kv}\n'
        )
        await _send(send, self.metrics_status, text.encode(), b"text/plain")

    async def _answer(
        self, scope: Scope, body: bytes, send: Send, gone: asyncio.Future[Any]
    ) -> None:
        if self.hold is not None:
            await asyncio.wait({asyncio.ensure_future(self.hold.wait()), gone},
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            if gone.done():
                return
        if self.mode == "500":
            await _send(send, 500, b'{"error": "boom"}')
            return
        doc = orjson.loads(body) if body else {}
        if not doc.get("stream"):
            answer = {"id": "x", "object": "chat.completion", "echo": doc, "path": scope["path"]}
            await _send(send, 200, orjson.dumps(answer), extra=[(b"x-upstream", b"yes")])
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for i in range(self.chunks):
            if gone.done():
                return
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                     "choices": [{"index": 0, "delta": {"content": f"t{i} "}}]}  # fmt: skip
            await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk)
                        + b"\n\n", "more_body": True})  # fmt: skip
            if self.mode == "abort" and i == 0:
                raise RuntimeError("fake upstream aborts mid-stream")
            if self.chunk_delay:
                await asyncio.wait({gone}, timeout=self.chunk_delay)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _send(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = b"application/json",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app on a free loopback port; yields its base URL."""
    sock = listen("127.0.0.1", 0)
    server = uvicorn_server(app, timeout_graceful_shutdown=1)
    async with serving(server, sock):
        yield url_of(sock)


def free_port() -> int:
    """A port free right now on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_config(backends: list[str], **sections: Any) -> GatewayConfig:
    """A one-pool config; keyword sections are merged into the document's top level.

    `saturation=` sets the pool's saturation section; `pool=` merges into the pool.
    """
    pool: dict[str, Any] = {
        "name": "default",
        "models": ["*"],
        "backends": backends,
        "saturation": sections.pop("saturation", {"type": "concurrency", "max_in_flight": 100}),
    }
    pool.update(sections.pop("pool", {}))
    doc: dict[str, Any] = {"server": {"host": "127.0.0.1", "port": 0}, "pools": [pool]}
    doc.update(sections)
    return parse_config(doc, source="test")


#: The preemption tests' objectives: one band to protect, one to make room from.
TWO_BANDS: list[dict[str, Any]] = [
    {"name": "interactive", "priority": 10},
    {"name": "batch", "priority": -1},
]


def slot_config(
    url: str,
    *,
    slots: int = 1,
    objectives: list[dict[str, Any]] | None = None,
    http: str = "builtin",
    **pool: Any,
) -> GatewayConfig:
    """One pool "p" of `slots` concurrent requests on `url`, with `objectives` (default
    `TWO_BANDS`) and demand headroom off, so a test decides when room must be made.
    `http`: the client-facing server (``builtin`` or ``uvicorn``)."""
    return parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "http": http},
            "pools": [
                {
                    "name": "p",
                    "backends": [url],
                    "saturation": {"type": "concurrency", "max_in_flight": slots},
                    **pool,
                }
            ],
            "flow_control": {"demand_headroom": False},
            "objectives": TWO_BANDS if objectives is None else objectives,
        }
    )
