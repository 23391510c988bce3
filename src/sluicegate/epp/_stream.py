"""One ext_proc stream: one HTTP request as Envoy walks it through its phases.

Request phase, ``FULL_DUPLEX_STREAMED`` (the upstream EPP's mode): Envoy sends the
headers, then body chunks without waiting for replies. The headers reply is held until
the body is complete, because the pick needs ``model`` from the body and flow control
may make the request wait; then the pick goes out as the headers reply, followed by
the body given back as ``streamed_response`` chunks (Envoy forwards only what the
processor returns in this mode). One headers reply per phase, before that phase's body
replies: Envoy's ordering rule.

Request phase, ``BUFFERED`` / ``STREAMED``: Envoy waits for the headers reply before it
sends the body, so the headers get an empty reply at once and the pick rides on the
(last) body reply, as a header mutation plus the same dynamic metadata.

Response phase: the headers reply adds ``x-sluicegate-outcome`` and
``x-sluicegate-queue-ms`` (as the HTTP gateway does); body chunks are counted for
token accounting and given back (full duplex) or let through (buffered). The in-flight
slot is released at the response's ``end_of_stream`` (or its trailers), or, whatever
happened, when the gRPC stream ends or is cancelled (`close`, from the handler's
``finally``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Final, final

import sluicegate as sg
import sluicegate.epp._protocol as proto
from sluicegate.gateway import GatewayError
from sluicegate.gateway._errors import error_reply
from sluicegate.gateway._tokens import UsageMeter

from ._picker import Refusal

if TYPE_CHECKING:
    from ._picker import Admission, EndpointPicker

__all__ = ["Lifecycle"]

Message = Any
_log = logging.getLogger("sluicegate.epp")
#: Bytes of a non-streamed response body kept for its ``usage`` object (at the end).
_TAIL: Final = 16 * 1024


@final
class Lifecycle:
    """The state of one request across its ext_proc messages.

    `handle` takes each message and returns the replies to send, in order. `done` is
    set when the stream should end (an immediate response was sent).
    """

    __slots__ = (
        "_admission",
        "_body_at",
        "_duplex",
        "_headers",
        "_hint",
        "_meter",
        "_parts",
        "_picker",
        "_response_duplex",
        "_size",
        "_status",
        "_tail",
        "decided",
        "done",
    )

    def __init__(self, picker: EndpointPicker) -> None:
        self._picker = picker
        self._duplex = picker.body_mode == proto.FULL_DUPLEX
        self._response_duplex = self._duplex
        self._headers: list[tuple[bytes, bytes]] = []
        self._hint: list[str] | None = None
        self._parts: list[bytes] = []
        self._size = 0
        self._admission: Admission | None = None
        self._meter: UsageMeter | None = None
        self._status = 0
        self._tail = b""
        self._body_at = 0.0
        self.decided = False
        self.done = False

    async def handle(self, request: Message) -> list[Message]:
        """The replies to one ``ProcessingRequest``."""
        kind = request.WhichOneof("request")
        if kind == "request_body":
            return await self._request_body(request.request_body)
        if kind == "request_headers":
            return await self._request_headers(request)
        if kind == "response_headers":
            return self._response_headers(request.response_headers)
        if kind == "response_body":
            return self._response_body(request.response_body)
        if kind == "request_trailers":
            replies = [] if self.decided else await self._decide(eos=False)
            return [*replies, proto.trailers(response=False)] if not self.done else replies
        if kind == "response_trailers":
            self.close()
            return [proto.trailers(response=True)]
        return []

    # -- request phase ------------------------------------------------------------------------

    async def _request_headers(self, request: Message) -> list[Message]:
        if request.HasField("protocol_config"):
            cfg = request.protocol_config
            if cfg.request_body_mode:
                self._duplex = cfg.request_body_mode == proto.FULL_DUPLEX
            if cfg.response_body_mode:
                self._response_duplex = cfg.response_body_mode == proto.FULL_DUPLEX
        self._headers = proto.headers_of(request.request_headers)
        self._hint = proto.subset_hint(request)
        if request.request_headers.end_of_stream:  # no body (a GET): decide now
            self._body_at = time.perf_counter()
            return await self._decide(eos=True, in_headers=True)
        return [] if self._duplex else [proto.plain_headers(response=False)]

    async def _request_body(self, chunk: Message) -> list[Message]:
        if self.decided or self.done:
            return []
        data: bytes = chunk.body
        self._size += len(data)
        limit = self._picker.config.server.max_body_bytes
        if self._size > limit:
            error = GatewayError(
                413,
                f"the request body exceeds the gateway's max_body_bytes={limit}",
                code="request_too_large",
            )
            return self._reject(error)
        if data:
            self._parts.append(data)
        if not chunk.end_of_stream:
            return [] if self._duplex else [proto.empty_body(response=False)]
        self._body_at = time.perf_counter()
        return await self._decide(eos=True)

    async def _decide(self, *, eos: bool, in_headers: bool = False) -> list[Message]:
        """Admit the request, then build the pick replies (or the rejection)."""
        self.decided = True
        if not self._body_at:
            self._body_at = time.perf_counter()
        parts = self._parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._parts = []
        try:
            admission = await self._picker.admit(self._headers, body, self._hint)
        except Refusal as refusal:
            return self._reject(refusal.error, refusal.queue_s, refusal.retry_after)
        except (GatewayError, sg.FlowControlError) as exc:
            return self._reject(exc)
        except Exception as exc:  # a bug: answer 500 as the gateway does, keep serving
            _log.exception("unexpected error while deciding a request")
            return self._reject(exc)
        self._admission = admission
        if admission.ticket is not None:
            self._meter = UsageMeter(admission.ticket)
        if in_headers:
            return [proto.pick_in_headers(admission.endpoint)]
        if not self._duplex:
            return [proto.pick_in_body(admission.endpoint)]
        return [
            proto.pick_in_headers(admission.endpoint),
            *proto.body_chunks(body, eos=eos, response=False),
        ]

    def _reject(
        self, exc: Exception, queue_s: float = 0.0, retry_after: int | None = None
    ) -> list[Message]:
        """An ImmediateResponse with the HTTP gateway's status, body and headers."""
        self.done = True
        self.decided = True
        status, body, headers = error_reply(exc, queue_ms=queue_s * 1000.0, retry_after=retry_after)
        return [proto.immediate(status, body, headers)]

    def observe(self) -> None:
        """After the pick went out: record the decision's latency."""
        admission = self._admission
        if admission is not None and self._body_at:
            self._picker.observe_decision(time.perf_counter() - self._body_at, admission.queue_s)
            self._body_at = 0.0

    # -- response phase -------------------------------------------------------------------------

    def _response_headers(self, headers: Message) -> list[Message]:
        self._status = proto.status_of(headers)
        admission, meter = self._admission, self._meter
        if meter is not None and admission is not None and admission.stream:
            meter.begin(self._status)
        if admission is not None and admission.ticket is not None:
            queue_ms = f"{admission.queue_s * 1000.0:.3f}"
            reply = proto.outcome_headers(sg.Outcome.DISPATCHED.value, queue_ms)
        else:
            reply = proto.plain_headers(response=True)
        if headers.end_of_stream:
            self.close()
        return [reply]

    def _response_body(self, chunk: Message) -> list[Message]:
        data: bytes = chunk.body
        meter = self._meter
        if meter is not None and self._admission is not None:
            if self._admission.stream:
                meter.chunk(data)
            else:
                self._tail = (self._tail + data)[-_TAIL:]
        eos: bool = chunk.end_of_stream
        if self._response_duplex:
            replies = list(proto.body_chunks(data, eos=eos, response=True))
        else:
            replies = [proto.empty_body(response=True)]
        if eos:
            self.close()
        return replies

    def close(self) -> None:
        """Account the response and release the slot; safe to call more than once."""
        admission, self._admission = self._admission, None
        if admission is None or admission.ticket is None:
            return
        meter, self._meter = self._meter, None
        if meter is not None:
            if not admission.stream and self._status:
                meter.body(self._status, self._tail)
            elif not self._status:
                meter.failed()  # no response came: nothing was generated
            meter.close()
        self._picker.release(admission)
