"""Pause and resume in the request path: one pausable request's upstream segments.

`_resume.py` decides what is safe and builds the one client answer (`StreamSplicer`);
this module does the I/O. A request that may be paused (`Resumable.of`: its pool has
`preemption: resume`, its priority may be paused, its body is plain text generation) is
relayed segment by segment: every segment is streamed upstream with usage, fed to the
splicer, and only the splicer's output reaches the client.

`Preemption.make_room` pauses such a request by setting `requested` and, when its
handler is waiting for upstream bytes, cancelling the handler task; a handler busy
sending to its client sees `requested` right after the send instead. Either way the
segment ends between two whole client writes, so nothing the client was sent is lost or
sent twice. The upstream request is closed (the engine stops generating), the ticket
lends its slot and waits for one on its own backend (`_affinity.py`, where the prefix
cache holds what it had), else is queued again at the head of its flow, and the
continuation (`StreamSplicer.pause`) is the next segment's body. The client's stream
stays open meanwhile.

A paused request's TTL starts again when it is queued again (as for a requeue). If it
runs out, or the gateway drains, a streamed answer ends with an SSE `error` event (the
client keeps what it was sent); a non-streamed one gets the error status. A client that
leaves while paused cancels the wait: its queue entry and everything else go.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Final, final

import orjson

from ._errors import error_reply
from ._proxy import _RESPONSE_SKIP, forward_headers, upstream_failed, upstream_url
from ._record import now
from ._resume import Kind, PausePolicy, StreamSplicer, pause_blocker, upstream_body
from ._upstream import KIND_STATUS, UPSTREAM_ERRORS, UpstreamFailure

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from ._client import Client
    from ._http1 import Response
    from ._proxy import Exchange
    from ._tokens import UsageMeter

__all__ = ["Resumable", "kind_of_path"]

_log = logging.getLogger("sluicegate.gateway")

_KINDS: Final[dict[str, Kind]] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
}
_SSE: Final = (b"content-type", b"text/event-stream; charset=utf-8")


def kind_of_path(path: str) -> Kind | None:
    """The generation kind of an inference path, or None (never paused)."""
    return _KINDS.get(path)


@final
class Resumable:
    """One request that may be paused and resumed, and its answer so far.

    Attributes:
        splicer: Builds the client's one answer from the segments.
        requested: A pause was asked for (by `Preemption.make_room`).
        reading: The handler waits for upstream bytes (a cancel then stops it cleanly).
        paused_at: When the current pause began (perf_counter), else 0.
        paused_s: Seconds spent paused so far (queued again, waiting for a slot).
        home: The backend of the last pause (see `Preemption.wait_again`).
        cuts: Segments cut so far (pauses, and cuts before anything was generated):
            the pause cap bounds them.
    """

    __slots__ = (
        "_headers",
        "cuts",
        "home",
        "paused_at",
        "paused_s",
        "reading",
        "requested",
        "splicer",
    )

    def __init__(self, splicer: StreamSplicer) -> None:
        self.splicer = splicer
        self.requested = False
        self.reading = False
        self.paused_at = 0.0
        self.paused_s = 0.0
        self.cuts = 0
        #: The backend of the last cut segment (its prefix cache holds the text so far).
        self.home: str | None = None
        self._headers: list[tuple[bytes, bytes]] | None = None

    @classmethod
    def of(
        cls,
        doc: dict[str, Any],
        path: str,
        priority: int,
        policy: PausePolicy | None,
        prompt_tokens: int | None = None,
    ) -> Resumable | None:
        """A `Resumable` for this request, or None when it may never be paused."""
        kind = kind_of_path(path)
        if (
            policy is None
            or kind is None
            or policy.max_pauses == 0
            or priority > policy.max_paused_priority
            or pause_blocker(doc, kind) is not None
        ):
            return None
        return cls(StreamSplicer(doc, kind, policy=policy, prompt_tokens=prompt_tokens))

    @staticmethod
    def first_body(doc: dict[str, Any]) -> bytes:
        """The first segment's upstream body: streamed, with usage."""
        return orjson.dumps(upstream_body(doc))

    @property
    def paused(self) -> bool:
        """The request is paused now (queued again)."""
        return self.paused_at != 0.0

    def pause(self, ex: Exchange) -> bytes | None:
        """The segment was cut: the continuation's body, or None when nothing was
        generated nor sent yet (a plain requeue: the same body goes again)."""
        self.requested = False
        self.cuts += 1
        splicer = self.splicer
        if splicer.tokens == 0 and splicer.pauses == 0 and not ex.started:
            splicer.restart()
            return None
        body = splicer.pause()
        if body is None:
            return None
        self.paused_at = time.perf_counter()
        self.home = ex.record.backend
        return orjson.dumps(body)

    def resumed(self) -> None:
        """Dispatched again after a pause."""
        if self.paused_at:
            self.paused_s += time.perf_counter() - self.paused_at
            self.paused_at = 0.0

    async def end_with_error(self, ex: Exchange, exc: Exception) -> bool:
        """End a started client stream with an SSE `error` event for `exc` (a paused
        request that cannot go on). False when nothing was sent yet (answer normally)."""
        self.resumed()
        if not ex.started:
            return False
        # The same type and code as the error status a request not yet answered gets.
        error = orjson.loads(error_reply(exc, queue_ms=0.0)[1])["error"]
        data = self.splicer.end_with_error(
            error["message"], error_type=error["type"], code=error["code"]
        )
        await ex.finish(data)
        return True

    async def relay(
        self,
        session: Client,
        ex: Exchange,
        base: str,
        body: bytes | bytearray,
        *,
        stream: bool,
        meter: UsageMeter | None = None,
    ) -> None:
        """Relay one segment (`relay`'s signature). Returns early, the upstream request
        closed, when a pause was asked for; else ends the client's answer."""
        del stream  # the upstream is always streamed; the splicer answers the client
        ex.record.backend = base
        began = now()
        resp: Response | None = None
        clean = False
        try:
            with UPSTREAM_ERRORS:
                resp = await session.request(
                    "POST",
                    upstream_url(base, ex.scope),
                    data=body,
                    headers=forward_headers(ex.scope["headers"]),
                    allow_redirects=False,
                )
                if resp.status >= 500:
                    raise UpstreamFailure(KIND_STATUS, "", f"HTTP {resp.status}")
                if resp.status != 200 or resp.content_type != "text/event-stream":
                    await self._refused(ex, resp, began, meter)
                else:
                    if meter is not None:
                        meter.begin(resp.status)
                    clean = await self._segment(ex, resp, began, meter)
        except UpstreamFailure as failed:
            if not ex.started:
                # Not bound to a local first: this frame, held by the error's traceback,
                # would hold the error (a reference cycle; see `_proxy.relay`).
                raise upstream_failed(ex, base, failed) from None
            # A continuation failed, or mid-stream.
            await self.end_with_error(ex, upstream_failed(ex, base, failed))
        finally:
            if resp is not None:
                if clean:
                    resp.release()
                else:
                    resp.close()  # a pause or an error: the engine stops generating

    async def _segment(
        self, ex: Exchange, resp: Response, began: float, meter: UsageMeter | None
    ) -> bool:
        """Pass one segment through the splicer. True when the answer ended, False when
        the segment was cut for a pause."""
        if self._headers is None:
            # Names come lower-cased from the client; every read is bounded by its timer.
            self._headers = [(n, v) for n, v in resp.headers if n not in _RESPONSE_SKIP]
        splicer, read, task = self.splicer, resp.readany, asyncio.current_task()
        body = ex.extension("sluicegate.body")
        while True:
            if self.requested:
                if splicer.can_pause:
                    return False  # asked while sending to the client: cut here
                self.requested = False  # it ended (or may not pause) meanwhile
            if body is not None and ex.started:
                return await self._pump(ex, resp, began, meter, body)
            data = await self._upstream(read(), task)
            if data is None:
                return False
            if not data:
                break
            if meter is not None:
                meter.chunk(data)
            out = splicer.feed(data)
            if out:
                if not ex.started:
                    ex.sse = True
                    await self._start(ex, began, content_length=None)
                await ex.chunk(out)
        await self._end(ex, began)
        return True

    async def _pump(
        self, ex: Exchange, resp: Response, began: float, meter: UsageMeter | None, body: Any
    ) -> bool:
        """The rest of a segment whose client stream has started, under the built-in
        server: each upstream read is fed to the splicer and its output written from the
        upstream connection's read callback (`Response.pump`, as `_proxy._pipe` does),
        with no task step per chunk. The handler only waits, so it is always `reading`:
        a pause cancels the wait, and the cut falls between two reads, after whole
        client writes, as in `_segment`'s loop. True when the answer ended."""
        splicer, write = self.splicer, body["write"]

        def relay(data: bytes) -> bool:
            out = splicer.feed(data)
            return bool(out) and write(out)

        count = None if meter is None else meter.chunk
        last = await self._upstream(resp.pump(relay, body["drain"], count), asyncio.current_task())
        if last is None:
            return False
        await self._end(ex, began, splicer.feed(last))
        return True

    async def _upstream(
        self, pending: Awaitable[bytes], task: asyncio.Task[Any] | None
    ) -> bytes | None:
        """Await `pending` (upstream bytes) as `reading`, so a pause may cancel it.
        None: a pause cut it (the cancellation was ours alone and is absorbed)."""
        self.reading = True
        try:
            return await pending
        except asyncio.CancelledError:
            # Ours (make_room) only if nothing else cancelled the task too.
            if self.requested and task is not None and task.uncancel() == 0:
                return None
            raise
        finally:
            self.reading = False

    async def _start(self, ex: Exchange, began: float, *, content_length: int | None) -> None:
        ex.record.upstream_s = now() - began
        headers = [
            (n, v) for n, v in self._headers or [] if n not in (b"content-type", b"content-length")
        ]
        if content_length is None:
            headers.append(_SSE)
        else:
            headers.append((b"content-type", b"application/json"))
            headers.append((b"content-length", str(content_length).encode()))
        await ex.start(200, headers)

    async def _end(self, ex: Exchange, began: float, last: bytes = b"") -> None:
        """The upstream answer ended: end the client's (a cut one ends with an error).
        `last`: the splicer's output not yet sent (it goes with the end, one write)."""
        splicer = self.splicer
        pool, cls = ex.record.pool, ex.record.classification
        if splicer.pauses and pool is not None and cls is not None:
            _log.info(
                "flow-control paused pool=%s flow=%s priority=%d pauses=%d paused_ms=%.1f",
                pool.name, cls.fairness_id, cls.priority, splicer.pauses, self.paused_s * 1000.0,
            )  # fmt: skip
        if not splicer.client_stream:
            data = splicer.response_body()
            await self._start(ex, began, content_length=len(data))
            await ex.finish(data)
            return
        tail = b"" if splicer.done else splicer.feed(b"data: [DONE]\n\n")
        if not ex.started:
            ex.sse = True
            await self._start(ex, began, content_length=None)
        await ex.finish(last + tail if last else tail)

    async def _refused(
        self,
        ex: Exchange,
        resp: Response,
        began: float,
        meter: UsageMeter | None,
    ) -> None:
        """An answer that is not a stream (a refusal): relayed whole before anything
        started, else the client's stream ends with an error event."""
        data = await resp.read()
        if meter is not None:
            meter.body(resp.status, data)
        if ex.started:
            message = f"the backend refused to resume the request (HTTP {resp.status})"
            data = self.splicer.end_with_error(message, error_type="server_error", code="resume")
            await ex.finish(data)
            return
        ex.record.upstream_s = now() - began
        headers = [(n, v) for n, v in resp.headers if n not in _RESPONSE_SKIP]
        headers.append((b"content-length", str(len(data)).encode()))
        await ex.start(resp.status, headers)
        await ex.finish(data)

    def describe(self) -> dict[str, Any]:
        """This request in /debug/flowcontrol."""
        splicer = self.splicer
        return {
            "pauses": splicer.pauses,
            "paused": self.paused,
            "paused_ms": round(self.paused_s * 1000.0, 1),
            "tokens": splicer.tokens,
        }
