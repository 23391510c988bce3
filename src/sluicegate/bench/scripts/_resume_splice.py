"""CPU cost of the pause-and-resume splicer per SSE event (single process, no I/O).

Feeds vLLM-shaped chat chunks (one token each, 4 events per read) through
`StreamSplicer.feed`, in streams of `--stream-events` events that end with a usage
chunk and `[DONE]`, and reports microseconds per event for:

* `split only`: finding whole events in the reads (the floor of any event-aware relay);
* `splicer, never paused`: the common path (events pass byte for byte, unread unless
  something asks or a stream's unread events pass 256 KiB, about 1,500 of these);
* `splicer, never paused, asked every read`: the same, with `can_pause` asked after
  every read (as a pause under pressure would), so every event is read;
* `splicer, after a pause`: each chunk re-encoded with the first segment's names.

    .venv/bin/python benchmarks/resume_splice.py --events 200000 --stream-events 500
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.gateway._resume import StreamSplicer

if TYPE_CHECKING:
    from collections.abc import Sequence


__all__ = ["main"]


def chunk(i: int, number: int) -> bytes:
    obj: dict[str, Any] = {
        "id": f"chatcmpl-{number}",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000 + number,
        "model": "sim-model",
        "choices": [{"index": 0, "delta": {"content": " dam"}, "logprobs": None,
                     "finish_reason": None}],
    }  # fmt: skip
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def reads(events: int, number: int, per_read: int = 4) -> list[bytes]:
    one = [chunk(i, number) for i in range(per_read)]
    return [b"".join(one)] * (events // per_read)


def split_only(data: list[bytes]) -> None:
    buffer = b""
    for piece in data:
        buffer += piece
        end = buffer.rfind(b"\n\n")
        if end >= 0:
            buffer[: end + 2][:-2].split(b"\n\n")
            buffer = buffer[end + 2 :]


TAIL = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000001,'
    b'"model":"sim-model","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":500,'
    b'"total_tokens":509}}\n\ndata: [DONE]\n\n'
)


def splice(data: list[bytes], per_stream: int, *, paused: bool, ask: bool = False) -> None:
    """Feed `data` as streams of `per_stream` reads, one splicer each."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    for start in range(0, len(data), per_stream):
        splicer = StreamSplicer(body, "chat")
        if paused:
            splicer.feed(chunk(0, 0))
            assert splicer.pause() is not None
        for piece in data[start : start + per_stream]:
            splicer.feed(piece)
            if ask:
                splicer.can_pause  # noqa: B018 (a read: the splicer reads its events)
        splicer.feed(TAIL)


def timed(label: str, events: int, run: Any) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    per_event = best / events * 1e6
    print(f"| {label} | {per_event:.2f} |")
    return per_event


def main(argv: Sequence[str] | None = None) -> None:
    """The command line of `benchmarks/resume_splice.py` (`argv`: its arguments)."""
    parser = argparse.ArgumentParser(prog="resume_splice.py", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--stream-events", type=int, default=500)
    args = parser.parse_args(argv)
    data = reads(args.events, 1)
    per_stream = max(1, args.stream_events // 4)
    print("| path | us per event (best of 5, process CPU) |\n|---|---|")
    floor = timed("split only", args.events, lambda: split_only(data))
    plain = timed(
        "splicer, never paused", args.events, lambda: splice(data, per_stream, paused=False)
    )
    asked = timed(
        "splicer, never paused, asked every read",
        args.events,
        lambda: splice(data, per_stream, paused=False, ask=True),
    )
    paused = timed(
        "splicer, after a pause", args.events, lambda: splice(data, per_stream, paused=True)
    )
    print(f"\nover the split, per event: never paused +{plain - floor:.2f} us, asked every "
          f"read +{asked - floor:.2f} us, after a pause +{paused - floor:.2f} us")  # fmt: skip
