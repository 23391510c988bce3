"""CPU cost of the pause-and-resume splicer per SSE event (single process, no I/O).

Feeds vLLM-shaped chat chunks (one token each, 4 events per read) through
`StreamSplicer.feed` and reports microseconds per event for:

* `split only`: finding whole events in the reads (the floor of any event-aware relay);
* `splicer, never paused`: the common path (events pass byte for byte, each parsed to
  track the text so far);
* `splicer, after a pause`: each chunk re-encoded with the first segment's names.

    .venv/bin/python benchmarks/resume_splice.py --events 200000
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


def splice(data: list[bytes], paused: bool) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    splicer = StreamSplicer(body, "chat")
    if paused:
        splicer.feed(chunk(0, 0))
        assert splicer.pause() is not None
    for piece in data:
        splicer.feed(piece)


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
    args = parser.parse_args(argv)
    data = reads(args.events, 1)
    print("| path | us per event (best of 5, process CPU) |\n|---|---|")
    floor = timed("split only", args.events, lambda: split_only(data))
    plain = timed("splicer, never paused", args.events, lambda: splice(data, False))
    paused = timed("splicer, after a pause", args.events, lambda: splice(data, True))
    print(f"\nnever paused: +{plain - floor:.2f} us/event over the split; "
          f"after a pause: +{paused - floor:.2f} us/event")  # fmt: skip
