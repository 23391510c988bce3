"""The simulator's raw ASGI app: routing, request handling, failure injection.

No framework: a dict maps `(method, path)` to a handler and responses are plain ASGI
messages, because Starlette's routing and `StreamingResponse` roughly halve SSE
throughput (docs/performance). Pending tokens are written in one `send`, one SSE event
per token, so a process that falls behind catches up instead of queueing writes.

A request's batch slot and KV are freed the moment its client disconnects: a watcher
task per request waits for `http.disconnect` and aborts the engine request from its done
callback, even while the handler is waiting for a token that may never come (`stall`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, final

import orjson

from ..asgi import ClientGone, Receive, Scope, Send, lifespan, read_body
from ._config import FailureType, SimConfig, check_failure_injection
from ._engine import DEFAULT_TIMER_SLACK_S, SimEngine, SimRequest
from ._errors import InjectedFailureError, InvalidRequestError, SimError
from ._metrics import CONTENT_TYPE, make_registry, render_metrics
from ._openai import (
    DONE,
    Kind,
    ParsedRequest,
    StreamEncoder,
    count_tokens,
    error_body,
    full_response,
    parse_request,
    parse_tokenize,
    token_ids,
)
from ._plan import Plan, Planner

__all__ = ["SimApp", "create_app"]

_Handler = Callable[[Receive, Send], Awaitable[None]]

_JSON: Final = [(b"content-type", b"application/json")]
_SSE: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


def create_app(config: SimConfig, *, timer_slack_s: float = DEFAULT_TIMER_SLACK_S) -> SimApp:
    """Build the ASGI app of one simulated model server.

    Args:
        config: The simulator configuration.
        timer_slack_s: Passed to `SimEngine` (0 gives exact token times in virtual time).
    """
    return SimApp(config, timer_slack_s=timer_slack_s)


@final
class SimApp:
    """One simulated vLLM-compatible server, as an ASGI callable.

    Attributes:
        config: The configuration it was built with.
        engine: Its engine (for `statistics()` in tests).
    """

    def __init__(self, config: SimConfig, *, timer_slack_s: float = DEFAULT_TIMER_SLACK_S) -> None:
        self.config = config
        self.engine = SimEngine(config, timer_slack_s=timer_slack_s)
        self._planner = Planner(config)
        self._registry = make_registry(self.engine, config.served_names[0])
        self._failure_rate = config.failure_injection_rate
        self._failure_types = config.failure_types
        self._freeze_metrics = config.freeze_metrics
        self._frozen_metrics: bytes | None = None
        self._tag = secrets.token_hex(3)  # keeps ids distinct across replicas
        self._served = 0
        self._routes: dict[tuple[str, str], _Handler] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("GET", "/v1/models"): self._models,
            ("GET", "/health"): self._health,
            ("POST", "/tokenize"): self._tokenize,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/sim/config"): self._get_settings,
            ("POST", "/sim/config"): self._post_settings,
        }

    def __repr__(self) -> str:
        return f"<SimApp {self.config.served_names[0]!r} {self.engine!r}>"

    def set_failure_injection(
        self, rate: float, types: tuple[FailureType, ...] | None = None
    ) -> None:
        """Change failure injection at run time (`rate` in percent, 0..100).

        Raises:
            ConfigError: The rate or a type is invalid.
        """
        types = self._failure_types if types is None else tuple(types)
        check_failure_injection(rate, types)
        self._failure_rate, self._failure_types = rate, types

    def freeze_metrics(self, frozen: bool) -> None:
        """Freeze `/metrics` at its next snapshot (stale metrics), or unfreeze it."""
        self._freeze_metrics = frozen
        if not frozen:
            self._frozen_metrics = None

    def settings(self) -> dict[str, Any]:
        """The run-time settings, as `GET /sim/config` returns them."""
        return {
            "failure_injection_rate": self._failure_rate,
            "failure_types": list(self._failure_types),
            "freeze_metrics": self._freeze_metrics,
        }

    def close(self) -> None:
        """Abort every request and refuse new ones (the server is shutting down)."""
        self.engine.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        if scope["type"] == "http":
            handler = self._routes.get((scope["method"], scope["path"]))
            if handler is None:
                status = 405 if any(p == scope["path"] for _, p in self._routes) else 404
                await _send_error(send, SimErrorStatus(status, "route not found"))
                return
            try:
                await handler(receive, send)
            except ClientGone:
                return
        elif scope["type"] == "lifespan":
            await lifespan(receive, send, self.close)

    async def _chat(self, receive: Receive, send: Send) -> None:
        await self._generate("chat", receive, send)

    async def _completions(self, receive: Receive, send: Send) -> None:
        await self._generate("completions", receive, send)

    async def _generate(self, kind: Kind, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        try:
            req = parse_request(body, kind, self.config.served_names)
            plan = self._planner.plan(req, self._failure_rate, self._failure_types)
            if plan.failure == "http-500" or plan.failure == "http-429":
                raise InjectedFailureError(int(plan.failure[5:]))
            ticket = self.engine.submit(
                req.prompt_tokens,
                plan.output_tokens,
                priority=req.priority,
                finish_reason=plan.finish_reason,
                stream=req.stream,
                stall=plan.failure == "stall",
                text=req.prompt_text,
                token_text=plan.token_text,
                continued=req.continued,
            )
        except SimError as exc:
            await _send_error(send, exc)
            return
        self._served += 1
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        request_id = f"{prefix}-{self._tag}-{self._served}"
        # Abort the engine request as soon as the client goes away (see module docstring).
        watcher = asyncio.ensure_future(receive())

        def abort(_: object) -> None:
            self.engine.abort(ticket)

        watcher.add_done_callback(abort)
        try:
            if req.stream:
                await self._stream(req, plan, ticket, request_id, send)
            else:
                await self._respond(req, plan, ticket, request_id, send)
        finally:
            watcher.remove_done_callback(abort)
            watcher.cancel()
            self.engine.abort(ticket)  # a no-op unless it ended early

    async def _stream(
        self, req: ParsedRequest, plan: Plan, ticket: SimRequest, request_id: str, send: Send
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        encoder = StreamEncoder(req.kind, request_id, req.model)
        total = plan.output_tokens
        stop_at = total // 2 if plan.failure == "drop" else total
        sent = 0
        while sent < stop_at:
            ready = min(await ticket.wait_progress(sent), stop_at)
            if ready <= sent:
                return  # aborted: the client left or the server is closing
            parts = [encoder.role()] if sent == 0 else []
            for i in range(sent, ready):
                reason = plan.finish_reason if i == total - 1 else None
                parts.append(encoder.token(plan.token_text(i), reason))
            sent = ready
            if sent == total:
                if req.include_usage:
                    parts.append(encoder.usage(req.prompt_tokens, total, self._cached(ticket)))
                parts.append(DONE)
                await send({"type": "http.response.body", "body": b"".join(parts)})
                return
            await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
        # An injected drop: return with the response incomplete, so the server closes the
        # connection without the chunked-encoding terminator.

    async def _respond(
        self, req: ParsedRequest, plan: Plan, ticket: SimRequest, request_id: str, send: Send
    ) -> None:
        await ticket.wait_done()
        if ticket.generated < plan.output_tokens:
            if not ticket.stall:
                await _send_error(send, SimErrorStatus(503, "the simulator is shutting down"))
            return
        text = plan.text(plan.output_tokens)
        body = full_response(
            req, request_id, text, plan.finish_reason, plan.output_tokens, self._cached(ticket)
        )
        if plan.failure == "drop":
            # Announce the whole body, send half, and leave: the connection closes mid-body.
            length = str(len(body)).encode()
            headers = [*_JSON, (b"content-length", length)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            half = body[: len(body) // 2]
            await send({"type": "http.response.body", "body": half, "more_body": True})
            return
        await _send_json(send, 200, body)

    def _cached(self, ticket: SimRequest) -> int | None:
        """`prompt_tokens_details.cached_tokens`, when the server reports it."""
        return ticket.cached_tokens if self.config.enable_prompt_tokens_details else None

    async def _models(self, receive: Receive, send: Send) -> None:
        created = int(time.time())  # a timestamp field, not timing logic
        data = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "sluicegate-sim",
                "root": self.config.model,
                "parent": None,
                "max_model_len": self.config.max_model_len,
            }
            for name in self.config.served_names
        ]
        await _send_json(send, 200, orjson.dumps({"object": "list", "data": data}))

    async def _health(self, receive: Receive, send: Send) -> None:
        await _send_json(send, 200, b"")

    async def _tokenize(self, receive: Receive, send: Send) -> None:
        try:
            text = parse_tokenize(await read_body(receive))
        except InvalidRequestError as exc:
            await _send_error(send, exc)
            return
        tokens = token_ids(text)
        assert len(tokens) == count_tokens(text)  # the engine sees the same count
        result = {
            "count": len(tokens),
            "max_model_len": self.config.max_model_len,
            "tokens": tokens,
            "token_strs": None,
        }
        await _send_json(send, 200, orjson.dumps(result))

    async def _metrics(self, receive: Receive, send: Send) -> None:
        if self._freeze_metrics:
            if self._frozen_metrics is None:
                self._frozen_metrics = render_metrics(self._registry)
            body = self._frozen_metrics
        else:
            body = render_metrics(self._registry)
        headers = [(b"content-type", CONTENT_TYPE), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _get_settings(self, receive: Receive, send: Send) -> None:
        await _send_json(send, 200, orjson.dumps(self.settings()))

    async def _post_settings(self, receive: Receive, send: Send) -> None:
        try:
            data = orjson.loads(await read_body(receive))
            if not isinstance(data, dict):
                raise InvalidRequestError("the body must be a JSON object")
            rate = data.get("failure_injection_rate", self._failure_rate)
            types = data.get("failure_types", self._failure_types)
            self.set_failure_injection(float(rate), tuple(types))
            if "freeze_metrics" in data:
                self.freeze_metrics(bool(data["freeze_metrics"]))
        except (SimError, ValueError, TypeError) as exc:  # incl. JSONDecodeError, ConfigError
            await _send_error(send, SimErrorStatus(400, str(exc)))
            return
        await _send_json(send, 200, orjson.dumps(self.settings()))


class SimErrorStatus(SimError):
    """An error with a status chosen at the call site (404, 405, 400, 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status  # type: ignore[misc]  # per-instance override of the ClassVar
        self.error_type = {400: "BadRequestError", 404: "NotFoundError"}.get(  # type: ignore[misc]
            status, "ServiceUnavailableError" if status == 503 else "MethodNotAllowed"
        )


async def _send_json(send: Send, status: int, body: bytes) -> None:
    headers = [*_JSON, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, exc: SimError) -> None:
    await _send_json(send, exc.status, error_body(str(exc), exc.error_type, exc.status))
