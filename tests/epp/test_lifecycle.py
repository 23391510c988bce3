"""Whole request lifecycles through the ext_proc protocol, as Envoy drives them."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from sluicegate.epp._protocol import BODY_CHUNK

from .conftest import (
    BODY,
    A,
    B,
    backend_in_flight,
    body,
    eventually,
    in_flight,
    make_config,
    queued,
    stack,
)


@pytest.mark.asyncio
async def test_full_duplex_lifecycle_picks_releases_and_forwards_both_bodies() -> None:
    """Pick as header and metadata (equal), headers reply first, bodies given back."""
    async with stack() as (running, envoy):
        req = envoy.open()
        decision = await req.request(BODY)
        assert decision.endpoint == A
        assert decision.metadata_endpoint == A
        # One headers reply, before the phase's body replies (Envoy's ordering rule).
        assert decision.order == ["request_headers", "request_body"]
        assert decision.forwarded == BODY
        assert in_flight(running) == 1
        answer = [b'{"id":"x","choices":[],', b'"usage":{"prompt_tokens":7,"completion_tokens":3}}']
        replies = await req.respond(answer)
        assert replies.forwarded == b"".join(answer)
        assert replies.headers["x-sluicegate-outcome"] == "Dispatched"
        assert "x-sluicegate-queue-ms" in replies.headers
        assert in_flight(running) == 0  # released at the response's end_of_stream
        await req.finish()


@pytest.mark.asyncio
async def test_buffered_mode_answers_headers_at_once_and_picks_on_the_body() -> None:
    async with stack(mode="buffered") as (running, envoy):
        req = envoy.open()
        decision = await req.request(BODY)
        assert decision.order == ["request_headers", "request_body"]
        assert decision.endpoint == decision.metadata_endpoint == A
        assert decision.forwarded == b""  # buffered: Envoy keeps its copy of the body
        await req.respond([b'{"usage":{"prompt_tokens":1,"completion_tokens":1}}'])
        assert in_flight(running) == 0
        await req.finish()


@pytest.mark.asyncio
async def test_chunked_and_large_bodies_are_reassembled_and_given_back_in_chunks() -> None:
    big = body(messages=[{"role": "user", "content": "x" * (3 * BODY_CHUNK)}])
    async with stack() as (_running, envoy):
        req = envoy.open()
        decision = await req.request(big, chunks=7)
        assert decision.endpoint == A
        assert decision.forwarded == big
        assert decision.order.count("request_body") == 4  # 62,000-byte pieces
        await req.respond()
        await req.finish()


@pytest.mark.asyncio
async def test_saturated_pool_queues_until_a_response_ends() -> None:
    """max_in_flight=1: the second request waits while Envoy holds it, then gets the pick."""
    async with stack(make_config([A], max_in_flight=1)) as (running, envoy):
        first = envoy.open()
        assert (await first.request(BODY)).endpoint == A
        second = envoy.open()
        waiting = asyncio.create_task(second.request(BODY))
        await eventually(lambda: queued(running) == 1)
        assert not waiting.done()
        await first.respond()
        decision = await waiting
        assert decision.endpoint == A
        assert decision.metadata_endpoint == A
        await first.finish()
        await second.respond()
        await second.finish()
        assert in_flight(running) == 0


@pytest.mark.asyncio
async def test_strict_priority_between_objectives() -> None:
    config = make_config(
        [A],
        max_in_flight=1,
        objectives=[{"name": "hi", "priority": 10}, {"name": "lo", "priority": 0}],
    )
    async with stack(config) as (running, envoy):
        holder = envoy.open()
        await holder.request(BODY)
        order: list[str] = []

        async def one(objective: str) -> None:
            req = envoy.open()
            await req.request(BODY, headers={"x-gateway-inference-objective": objective})
            order.append(objective)
            await req.respond()
            await req.finish()

        low = asyncio.create_task(one("lo"))
        await eventually(lambda: queued(running) == 1)
        high = asyncio.create_task(one("hi"))
        await eventually(lambda: queued(running) == 2)
        await holder.respond()
        await holder.finish()
        await asyncio.gather(low, high)
        assert order == ["hi", "lo"]


@pytest.mark.asyncio
async def test_non_json_body_is_a_400_immediate_response_like_the_gateway() -> None:
    async with stack() as (running, envoy):
        req = envoy.open()
        decision = await req.request(b"this is not json")
        await req.finish()
    assert decision.status == 400
    assert decision.order == ["immediate_response"]
    doc = orjson.loads(decision.body)
    assert doc["error"]["code"] == "invalid_json"
    assert decision.headers["content-type"] == "application/json"
    assert decision.headers["x-sluicegate-outcome"] == "Invalid"
    assert in_flight(running) == 0


@pytest.mark.asyncio
async def test_queue_full_is_a_429_with_the_gateway_body() -> None:
    config = make_config([A], max_in_flight=1, flow_control={"bands": {"0": {"max_requests": 1}}})
    async with stack(config) as (running, envoy):
        holder = envoy.open()
        await holder.request(BODY)
        waiter = envoy.open()
        waiting = asyncio.create_task(waiter.request(BODY))
        await eventually(lambda: queued(running) == 1)
        refused = envoy.open()
        decision = await refused.request(BODY)
        await refused.finish()
        assert decision.status == 429
        assert "retry-after" not in decision.headers  # nothing left the band: no promise
        assert decision.headers["x-sluicegate-retry"] == "starved"
        doc = orjson.loads(decision.body)
        assert doc["error"]["type"] == "rate_limit_error"
        assert doc["error"]["code"] == "queue_full"
        assert decision.headers["x-sluicegate-outcome"] == "RejectedCapacity"
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await holder.respond()
        await holder.finish()


@pytest.mark.asyncio
async def test_ttl_expiry_is_a_503_queue_timeout() -> None:
    async with stack(make_config([A], max_in_flight=1)) as (_running, envoy):
        holder = envoy.open()
        await holder.request(BODY)
        req = envoy.open()
        decision = await req.request(BODY, headers={"x-sluicegate-ttl-ms": "50"})
        await req.finish()
        assert decision.status == 503
        assert orjson.loads(decision.body)["error"]["code"] == "queue_timeout"
        assert "retry-after" not in decision.headers
        await holder.respond()
        await holder.finish()


@pytest.mark.asyncio
async def test_bad_header_and_unknown_model_answer_as_the_gateway_does() -> None:
    config = make_config([A], pool={"models": ["known"]})
    async with stack(config) as (_running, envoy):
        req = envoy.open()
        bad = await req.request(
            body(model="known"), headers={"x-gateway-inference-fairness-id": "a b"}
        )
        await req.finish()
        req = envoy.open()
        unknown = await req.request(body(model="other"))
        await req.finish()
    assert bad.status == 400
    assert orjson.loads(bad.body)["error"]["param"] == "x-gateway-inference-fairness-id"
    assert unknown.status == 404
    assert orjson.loads(unknown.body)["error"]["code"] == "model_not_found"


@pytest.mark.asyncio
async def test_cancel_while_queued_leaves_the_queue_and_nothing_leaks() -> None:
    async with stack(make_config([A], max_in_flight=1)) as (running, envoy):
        holder = envoy.open()
        await holder.request(BODY)
        req = envoy.open()
        waiting = asyncio.create_task(req.request(BODY))
        await eventually(lambda: queued(running) == 1)
        req.cancel()  # Envoy resets the stream: the client went away
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await eventually(lambda: queued(running) == 0)
        assert in_flight(running) == 1
        await holder.respond()
        await holder.finish()
        await eventually(lambda: running.picker.streams == 0)
        assert in_flight(running) == 0
        assert backend_in_flight(running) == {A: 0}
        stats = running.picker.pools["default"].controller.statistics()
        assert any(o.value == "EvictedCancelled" for o in stats.outcomes)


@pytest.mark.asyncio
async def test_cancel_mid_response_releases_the_slot() -> None:
    async with stack(make_config([A], max_in_flight=1)) as (running, envoy):
        req = envoy.open()
        await req.request(body(stream=True))
        next_one = envoy.open()
        waiting = asyncio.create_task(next_one.request(BODY))
        await eventually(lambda: queued(running) == 1)
        # Response headers and part of the body, then the stream is reset.
        await req.call.write(_response_headers())
        await req.call.read()
        req.cancel()
        decision = await waiting  # the slot came back: the queued request goes
        assert decision.endpoint == A
        await next_one.respond()
        await next_one.finish()
        await eventually(lambda: running.picker.streams == 0)
        assert in_flight(running) == 0


@pytest.mark.asyncio
async def test_stream_ending_without_a_response_releases_the_slot() -> None:
    """Envoy half-closes after the pick (the upstream failed): the slot comes back."""
    async with stack(make_config([A], max_in_flight=1)) as (running, envoy):
        req = envoy.open()
        await req.request(BODY)
        assert in_flight(running) == 1
        await req.finish()
        assert in_flight(running) == 0


@pytest.mark.asyncio
async def test_a_thousand_concurrent_streams_all_pick_and_release() -> None:
    config = make_config([A, B], max_in_flight=100_000)
    async with stack(config) as (running, envoy):
        decisions = await asyncio.gather(*(envoy.lifecycle(BODY) for _ in range(1000)))
        assert all(d.endpoint in {A, B} and d.endpoint == d.metadata_endpoint for d in decisions)
        assert {d.endpoint for d in decisions} == {A, B}
        await eventually(lambda: running.picker.streams == 0)
        assert in_flight(running) == 0
        assert backend_in_flight(running) == {A: 0, B: 0}


@pytest.mark.asyncio
async def test_a_thousand_streams_queued_behind_a_small_limit_all_complete() -> None:
    config = make_config([A, B], max_in_flight=8)
    async with stack(config) as (running, envoy):
        decisions = await asyncio.gather(*(envoy.lifecycle(BODY) for _ in range(1000)))
        assert all(not d.rejected for d in decisions)
        await eventually(lambda: running.picker.streams == 0)
        assert backend_in_flight(running) == {A: 0, B: 0}


def _response_headers() -> object:
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

    return ext.ProcessingRequest(
        response_headers=ext.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[base_pb2.HeaderValue(key=":status", raw_value=b"200")]
            )
        )
    )


@pytest.mark.asyncio
async def test_buffered_body_over_grpcs_default_limit_is_accepted() -> None:
    """Buffered mode sends the body whole: bodies above gRPC's 4 MiB default still pass."""
    big = body(messages=[{"role": "user", "content": "x" * (5 * 1024 * 1024)}])
    async with stack(mode="buffered") as (running, envoy):
        req = envoy.open()
        decision = await req.request(big)
        assert decision.endpoint == A
        await req.respond()
        await req.finish()
        assert in_flight(running) == 0


@pytest.mark.asyncio
async def test_body_over_max_body_bytes_is_a_413() -> None:
    config = make_config([A], server={"host": "127.0.0.1", "max_body_bytes": 1000})
    async with stack(config) as (_running, envoy):
        req = envoy.open()
        decision = await req.request(
            body(messages=[{"role": "user", "content": "x" * 2000}]), chunks=3
        )
        await req.finish()
    assert decision.status == 413
    assert orjson.loads(decision.body)["error"]["code"] == "request_too_large"


@pytest.mark.asyncio
async def test_an_unexpected_error_is_a_500_and_the_picker_keeps_serving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with stack() as (running, envoy):

        async def broken(*args: object) -> None:
            raise RuntimeError("boom")

        with monkeypatch.context() as patch:
            patch.setattr(running.picker, "admit", broken)
            req = envoy.open()
            decision = await req.request(BODY)
            await req.finish()
        assert decision.status == 500
        assert orjson.loads(decision.body)["error"]["code"] == "internal_error"
        assert (await envoy.lifecycle(BODY)).endpoint == A


@pytest.mark.asyncio
async def test_request_trailers_end_the_body_and_are_answered_after_it() -> None:
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

    def headers(**values: str) -> object:
        return base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()]
        )

    async with stack() as (running, envoy):
        req = envoy.open()
        call = req.call
        await call.write(
            ext.ProcessingRequest(
                request_headers=ext.HttpHeaders(
                    headers=headers(**{":method": "POST", ":path": "/v1/completions"})
                )
            )
        )
        await call.write(ext.ProcessingRequest(request_body=ext.HttpBody(body=BODY)))
        await call.write(ext.ProcessingRequest(request_trailers=ext.HttpTrailers()))
        kinds = []
        forwarded = b""
        for _ in range(3):
            reply = await call.read()
            kinds.append(reply.WhichOneof("response"))
            if kinds[-1] == "request_body":
                streamed = reply.request_body.response.body_mutation.streamed_response
                forwarded += streamed.body
                assert not streamed.end_of_stream  # the trailers end the request, not the body
        assert kinds == ["request_headers", "request_body", "request_trailers"]
        assert forwarded == BODY
        await call.write(ext.ProcessingRequest(response_trailers=ext.HttpTrailers()))
        reply = await call.read()
        assert reply.WhichOneof("response") == "response_trailers"
        assert in_flight(running) == 0  # the response's trailers released the slot
        await req.finish()


@pytest.mark.parametrize("mode", ["full-duplex", "buffered"])
@pytest.mark.asyncio
async def test_requests_without_a_body_get_the_least_loaded_endpoint_unqueued(mode: str) -> None:
    async with stack(make_config([A, B], max_in_flight=1), mode=mode) as (running, envoy):
        busy = envoy.open()
        busy_on = (await busy.request(BODY)).endpoint
        req = envoy.open()
        decision = await req.request(None, path="/v1/models")
        assert decision.order == ["request_headers"]
        assert decision.endpoint == decision.metadata_endpoint
        assert decision.endpoint in {A, B} - {busy_on}
        replies = await req.respond([b'{"data":[]}'])
        assert "x-sluicegate-outcome" not in replies.headers  # not flow-controlled
        await req.finish()
        assert in_flight(running) == 1
        await busy.respond()
        await busy.finish()
