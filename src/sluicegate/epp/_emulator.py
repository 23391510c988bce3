"""An Envoy emulator: drives ext_proc streams as Envoy's ext_proc filter does.

Written from the protocol definition (``external_processor.proto`` and the filter's
processing modes), for the tests and ``sluicegate bench epp``; no Envoy binary is run
anywhere in this project. One `EmulatedRequest` is one HTTP request: `request` plays
the request phase (headers, then the body; in full-duplex mode without waiting for
replies, in buffered mode after the headers reply), `respond` plays the response phase
as if the picked backend answered, and leaving the context closes the stream the way
Envoy does when the request is complete (half-close, then wait for the server's end).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, final

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from google.protobuf import struct_pb2

from ._protocol import DESTINATION_HEADER, DESTINATION_NAMESPACE, SUBSET_KEY, SUBSET_NAMESPACE

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from types import TracebackType

__all__ = ["Decision", "EmulatedRequest", "EnvoyEmulator", "ResponseReplies"]

_MODES = {
    "full-duplex": processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED,
    "buffered": processing_mode_pb2.ProcessingMode.BUFFERED,
}


@final
@dataclass(slots=True)
class Decision:
    """What the picker answered in the request phase."""

    #: The header mutation's ``x-gateway-destination-endpoint`` (None if rejected).
    endpoint: str | None = None
    #: ``dynamic_metadata["envoy.lb"]["x-gateway-destination-endpoint"]``.
    metadata_endpoint: str | None = None
    #: An ImmediateResponse: (status, headers, body).
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: The request body as the picker gave it back (full-duplex mode).
    forwarded: bytes = b""
    #: Seconds from the last body chunk sent to the pick (or rejection) received.
    latency: float = 0.0
    #: The reply kinds in the order they came.
    order: list[str] = field(default_factory=list)

    @property
    def rejected(self) -> bool:
        return self.status is not None


@final
@dataclass(slots=True)
class ResponseReplies:
    """What the picker answered in the response phase."""

    headers: dict[str, str] = field(default_factory=dict)
    forwarded: bytes = b""
    order: list[str] = field(default_factory=list)


def _header_map(mutation: Any) -> dict[str, str]:
    return {
        h.header.key: (h.header.raw_value or h.header.value.encode()).decode("latin-1")
        for h in mutation.set_headers
    }


def _http_headers(headers: Mapping[str, str], eos: bool) -> Any:
    return ext.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
        ),
        end_of_stream=eos,
    )


@final
class EmulatedRequest:
    """One ext_proc stream (see the module docstring)."""

    def __init__(self, call: Any, mode: str) -> None:
        self.call = call
        self.mode = mode
        self.decision: Decision | None = None
        self._bodyless = False

    @property
    def duplex(self) -> bool:
        return self.mode == "full-duplex"

    async def request(
        self,
        body: bytes | None,
        *,
        headers: Mapping[str, str] | None = None,
        subset: Iterable[str] | None = None,
        path: str = "/v1/chat/completions",
        chunks: int = 1,
    ) -> Decision:
        """Play the request phase; returns the pick or the rejection."""
        self._bodyless = body is None
        all_headers = {":method": "POST" if body is not None else "GET", ":path": path}
        all_headers.update(headers or {})
        first = ext.ProcessingRequest(
            request_headers=_http_headers(all_headers, body is None),
            protocol_config=ext.ProtocolConfiguration(
                request_body_mode=_MODES[self.mode], response_body_mode=_MODES[self.mode]
            ),
        )
        if subset is not None:
            hint = struct_pb2.Struct()
            hint.fields[SUBSET_KEY].list_value.extend(list(subset))
            first.metadata_context.filter_metadata[SUBSET_NAMESPACE].CopyFrom(hint)
        decision = Decision()
        await self.call.write(first)
        if body is not None and not self.duplex:
            reply = await self.call.read()
            if self._take(reply, decision):
                return decision
        began = time.perf_counter()
        if body is not None:
            size = max(1, -(-len(body) // max(chunks, 1)))
            pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
            for i, piece in enumerate(pieces):
                eos = i == len(pieces) - 1
                await self.call.write(
                    ext.ProcessingRequest(request_body=ext.HttpBody(body=piece, end_of_stream=eos))
                )
        while True:
            reply = await self.call.read()
            if reply is grpc.aio.EOF:
                raise RuntimeError("the picker ended the stream without a decision")
            if not decision.latency:
                decision.latency = time.perf_counter() - began
            if self._take(reply, decision):
                break
        self.decision = decision
        return decision

    def _take(self, reply: Any, decision: Decision) -> bool:
        """Record one request-phase reply; True when the phase is over."""
        kind = reply.WhichOneof("response")
        decision.order.append(kind)
        if kind == "immediate_response":
            imm = reply.immediate_response
            decision.status = imm.status.code
            decision.headers = _header_map(imm.headers)
            decision.body = imm.body
            return True
        if reply.HasField("dynamic_metadata"):
            ns = reply.dynamic_metadata.fields[DESTINATION_NAMESPACE].struct_value
            decision.metadata_endpoint = ns.fields[DESTINATION_HEADER].string_value
        common = getattr(reply, kind).response
        picked = _header_map(common.header_mutation).get(DESTINATION_HEADER)
        if picked is not None:
            decision.endpoint = picked
        if kind == "request_headers":
            # The phase ends here without a body, or in buffered mode once it has a pick.
            return picked is not None if (self._bodyless or not self.duplex) else False
        streamed = common.body_mutation.streamed_response
        decision.forwarded += streamed.body
        if self.duplex:
            return bool(streamed.end_of_stream)
        return decision.endpoint is not None

    async def respond(
        self, body_chunks: Iterable[bytes] = (b'{"usage":{}}',), *, status: int = 200
    ) -> ResponseReplies:
        """Play the response phase: headers, then the body chunks (the last one ends it)."""
        chunks = list(body_chunks)
        out = ResponseReplies()
        await self.call.write(
            ext.ProcessingRequest(
                response_headers=_http_headers({":status": str(status)}, not chunks)
            )
        )
        reply = await self.call.read()
        out.order.append(reply.WhichOneof("response"))
        out.headers = _header_map(reply.response_headers.response.header_mutation)
        if not chunks:
            return out
        if not self.duplex:
            chunks = [b"".join(chunks)]
        for i, chunk in enumerate(chunks):
            eos = i == len(chunks) - 1
            await self.call.write(
                ext.ProcessingRequest(response_body=ext.HttpBody(body=chunk, end_of_stream=eos))
            )
        while True:
            reply = await self.call.read()
            out.order.append(reply.WhichOneof("response"))
            streamed = reply.response_body.response.body_mutation.streamed_response
            out.forwarded += streamed.body
            if not self.duplex or streamed.end_of_stream:
                return out

    async def finish(self) -> None:
        """End the stream as Envoy does once the request is complete."""
        await self.call.done_writing()
        while await self.call.read() is not grpc.aio.EOF:
            pass

    def cancel(self) -> None:
        """Reset the stream, as Envoy does when the client goes away."""
        self.call.cancel()


@final
class EnvoyEmulator:
    """A gRPC channel to a picker, opening one stream per emulated HTTP request.

    Args:
        target: ``host:port`` of the picker's gRPC port.
        mode: ``"full-duplex"`` (the upstream's) or ``"buffered"``.
    """

    def __init__(self, target: str, *, mode: str = "full-duplex") -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {sorted(_MODES)}, got {mode!r}")
        self.target = target
        self.mode = mode
        self._channel: Any = None
        self._stub: Any = None

    async def __aenter__(self) -> EnvoyEmulator:
        self._channel = grpc.aio.insecure_channel(self.target)
        self._stub = ext_grpc.ExternalProcessorStub(self._channel)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._channel.close()

    def open(self) -> EmulatedRequest:
        """A new stream (one HTTP request)."""
        return EmulatedRequest(self._stub.Process(), self.mode)

    async def lifecycle(
        self,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        response: Iterable[bytes] = (b'{"usage":{}}',),
    ) -> Decision:
        """One whole request: pick, response, end of stream."""
        req = self.open()
        decision = await req.request(body, headers=headers)
        if not decision.rejected:
            await req.respond(response)
        await req.finish()
        return decision
