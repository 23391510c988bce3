"""Envoy ext_proc v3 messages: reading what Envoy sends, building what it expects back.

Names follow the Gateway API Inference Extension's "Endpoint Picker Protocol": the pick
travels as the request header ``x-gateway-destination-endpoint`` and, with the same
value, as dynamic metadata ``envoy.lb / x-gateway-destination-endpoint`` (Envoy's
ORIGINAL_DST cluster reads either). A subset hint arrives as filter metadata
``envoy.lb.subset_hint / x-gateway-destination-endpoint-subset``: a list of ``ip:port``.

Only plain functions over the generated ``xds-protos`` classes live here, so the stream
handler reads as protocol steps and tests can build the same messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = [
    "BODY_CHUNK",
    "DESTINATION_HEADER",
    "DESTINATION_NAMESPACE",
    "FULL_DUPLEX",
    "SUBSET_KEY",
    "SUBSET_NAMESPACE",
    "body_chunks",
    "body_mode",
    "empty_body",
    "headers_of",
    "immediate",
    "outcome_headers",
    "pick_in_body",
    "pick_in_headers",
    "plain_headers",
    "status_of",
    "subset_hint",
    "trailers",
]

DESTINATION_HEADER: Final = "x-gateway-destination-endpoint"
DESTINATION_NAMESPACE: Final = "envoy.lb"
SUBSET_NAMESPACE: Final = "envoy.lb.subset_hint"
SUBSET_KEY: Final = "x-gateway-destination-endpoint-subset"
FULL_DUPLEX: Final[int] = processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED
#: Bytes per streamed body reply: under the 64 KiB some Envoy builds accept per chunk.
BODY_CHUNK: Final = 62_000

Message = Any  # generated protobuf classes carry no static types
Headers = list[tuple[bytes, bytes]]

_PICKS: dict[str, Message] = {}
_OUTCOMES: dict[tuple[str, str], Message] = {}
_MAX_CACHED: Final = 4096


def headers_of(http_headers: Message) -> Headers:
    """An ``HttpHeaders`` message as lower-case (name, value) byte pairs.

    Envoy fills ``raw_value`` (bytes); older builds fill ``value`` (string).
    """
    out: Headers = []
    for header in http_headers.headers.headers:
        value: bytes = header.raw_value or header.value.encode("latin-1")
        out.append((header.key.lower().encode("latin-1"), value))
    return out


def status_of(http_headers: Message) -> int:
    """The ``:status`` of response headers (0 when absent or malformed)."""
    for header in http_headers.headers.headers:
        if header.key == ":status":
            value: bytes = header.raw_value or header.value.encode("latin-1")
            return int(value) if value.isdigit() else 0
    return 0


def body_mode(request: Message, default: int) -> int:
    """The request body mode Envoy announced in ``protocol_config``, else `default`."""
    if request.HasField("protocol_config"):
        mode: int = request.protocol_config.request_body_mode
        if mode:
            return mode
    return default


def subset_hint(request: Message) -> list[str] | None:
    """The hinted endpoints (``ip:port``) of a request, or None when there is no hint.

    An empty list is a hint too: nothing is eligible.
    """
    if not request.HasField("metadata_context"):
        return None
    namespaces = request.metadata_context.filter_metadata
    if SUBSET_NAMESPACE not in namespaces:
        return None
    fields = namespaces[SUBSET_NAMESPACE].fields
    if SUBSET_KEY not in fields:
        return None
    value = fields[SUBSET_KEY]
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        return [v.string_value for v in value.list_value.values if v.string_value]
    if kind == "string_value":  # tolerated: a comma-separated list
        return [s.strip() for s in value.string_value.split(",") if s.strip()]
    return []


def _set_headers(pairs: Iterable[tuple[str, str]]) -> Message:
    return ext.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=k, raw_value=v.encode("latin-1"))
            )
            for k, v in pairs
        ]
    )


def _destination(endpoint: str) -> Message:
    meta = struct_pb2.Struct()
    meta.fields[DESTINATION_NAMESPACE].struct_value.fields[
        DESTINATION_HEADER
    ].string_value = endpoint
    return meta


def _pick_common(endpoint: str, extra: Iterable[tuple[str, str]]) -> Message:
    return ext.CommonResponse(
        header_mutation=_set_headers([(DESTINATION_HEADER, endpoint), *extra]),
        # The route may depend on the header just set (ORIGINAL_DST reads it).
        clear_route_cache=True,
    )


def pick_in_headers(endpoint: str) -> Message:
    """The request-headers reply carrying the pick (full-duplex mode).

    Replies are immutable once built and depend on the endpoint alone, so each is built
    once (a pool has few endpoints; the cache is emptied if that ever stops being true).
    """
    reply = _PICKS.get(endpoint)
    if reply is None:
        if len(_PICKS) >= _MAX_CACHED:
            _PICKS.clear()
        reply = _PICKS[endpoint] = ext.ProcessingResponse(
            request_headers=ext.HeadersResponse(response=_pick_common(endpoint, ())),
            dynamic_metadata=_destination(endpoint),
        )
    return reply


def pick_in_body(endpoint: str, extra: Iterable[tuple[str, str]] = ()) -> Message:
    """The request-body reply carrying the pick (buffered mode: headers went already)."""
    return ext.ProcessingResponse(
        request_body=ext.BodyResponse(response=_pick_common(endpoint, extra)),
        dynamic_metadata=_destination(endpoint),
    )


def outcome_headers(outcome: str, queue_ms: str) -> Message:
    """The response-headers reply adding ``x-sluicegate-outcome`` / ``-queue-ms``.

    Built once per distinct pair: unsaturated, every request has the same one.
    """
    key = (outcome, queue_ms)
    reply = _OUTCOMES.get(key)
    if reply is None:
        if len(_OUTCOMES) >= _MAX_CACHED:
            _OUTCOMES.clear()
        extra = (("x-sluicegate-outcome", outcome), ("x-sluicegate-queue-ms", queue_ms))
        reply = _OUTCOMES[key] = plain_headers(response=True, extra=extra)
    return reply


def plain_headers(*, response: bool, extra: Iterable[tuple[str, str]] = ()) -> Message:
    """A headers reply that changes nothing (or only adds `extra`)."""
    pairs = list(extra)
    common = ext.CommonResponse(header_mutation=_set_headers(pairs)) if pairs else None
    reply = ext.HeadersResponse(response=common) if common else ext.HeadersResponse()
    if response:
        return ext.ProcessingResponse(response_headers=reply)
    return ext.ProcessingResponse(request_headers=reply)


def empty_body(*, response: bool) -> Message:
    """A body reply that lets the (buffered or streamed) chunk through unchanged."""
    if response:
        return ext.ProcessingResponse(response_body=ext.BodyResponse())
    return ext.ProcessingResponse(request_body=ext.BodyResponse())


def _streamed(data: bytes, eos: bool, response: bool) -> Message:
    common = ext.CommonResponse(
        body_mutation=ext.BodyMutation(
            streamed_response=ext.StreamedBodyResponse(body=data, end_of_stream=eos)
        )
    )
    if response:
        return ext.ProcessingResponse(response_body=ext.BodyResponse(response=common))
    return ext.ProcessingResponse(request_body=ext.BodyResponse(response=common))


def body_chunks(data: bytes, *, eos: bool, response: bool) -> Iterator[Message]:
    """Full-duplex body replies giving `data` back to Envoy, in chunks of `BODY_CHUNK`.

    The last one carries `eos`; an empty body is one empty reply.
    """
    if len(data) <= BODY_CHUNK:
        yield _streamed(data, eos, response)
        return
    view = memoryview(data)
    for at in range(0, len(data), BODY_CHUNK):
        last = at + BODY_CHUNK >= len(data)
        yield _streamed(bytes(view[at : at + BODY_CHUNK]), eos and last, response)


def trailers(*, response: bool) -> Message:
    """A trailers reply that changes nothing."""
    if response:
        return ext.ProcessingResponse(response_trailers=ext.TrailersResponse())
    return ext.ProcessingResponse(request_trailers=ext.TrailersResponse())


def immediate(status: int, body: bytes, headers: Headers) -> Message:
    """An ``ImmediateResponse``: Envoy answers the client itself and never goes upstream."""
    mutation = _set_headers(
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in headers
        if k != b"content-length"  # Envoy frames the local reply itself
    )
    return ext.ProcessingResponse(
        immediate_response=ext.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=mutation,
            body=body,
            details="sluicegate_epp",
        )
    )
