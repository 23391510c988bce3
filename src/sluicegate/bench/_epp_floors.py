"""Do-nothing ext_proc servers: the gRPC stacks a Python picker could be built on.

Each server answers every ext_proc message with one empty reply, so a lifecycle (the
lean load's three round trips, four message pairs) measures the stack's own cost. The
picker's own work comes on top, so a stack whose floor is under 2,000 lifecycles per
CPU-second cannot carry a picker to 2,000 per core. Run the whole matrix, interleaved,
each server pinned to core 0 and the load to core 1::

    python -m sluicegate.bench._epp_floors [SECONDS] [ROUNDS] [VARIANT ...]

``sluicegate bench epp`` runs two of them in its own run: ``aio-uvloop`` (grpcio's
server, what the picker used before) and ``sluicegate-h2`` (the picker's server).
``grpclib`` runs only where that package is installed (it is not a dependency).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, Final

from ._overhead import cpu_seconds, free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

__all__ = ["FLOORS", "floor_main", "measure_lean"]

_PROCESS: Final = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


def _reply() -> Any:
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

    return ext.ProcessingResponse(request_headers=ext.HeadersResponse())


def _aio(options: list[tuple[str, Any]], loop: str = "uvloop") -> None:
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc

    reply = _reply()

    class Floor(ext_grpc.ExternalProcessorServicer):  # type: ignore[misc]
        async def Process(self, requests: Any, context: Any) -> AsyncIterator[Any]:
            async for _ in requests:
                yield reply

    async def main() -> None:
        server = grpc.aio.server(options=options)
        ext_grpc.add_ExternalProcessorServicer_to_server(Floor(), server)
        server.add_insecure_port(f"127.0.0.1:{sys.argv[2]}")
        await server.start()
        print("listening", flush=True)  # noqa: T201
        await server.wait_for_termination()

    _run(main(), loop)


def _aio_read_write() -> None:
    # context.read()/write() instead of the request iterator and a generator.
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc

    reply = _reply()

    class Floor(ext_grpc.ExternalProcessorServicer):  # type: ignore[misc]
        async def Process(self, requests: Any, context: Any) -> None:
            while (await context.read()) is not grpc.aio.EOF:
                await context.write(reply)

    async def main() -> None:
        server = grpc.aio.server()
        ext_grpc.add_ExternalProcessorServicer_to_server(Floor(), server)
        server.add_insecure_port(f"127.0.0.1:{sys.argv[2]}")
        await server.start()
        print("listening", flush=True)  # noqa: T201
        await server.wait_for_termination()

    _run(main(), "uvloop")


def _sync_threads() -> None:
    from concurrent import futures

    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc

    reply = _reply()

    class Floor(ext_grpc.ExternalProcessorServicer):  # type: ignore[misc]
        def Process(self, requests: Any, context: Any) -> Iterator[Any]:
            for _ in requests:
                yield reply

    # A stream holds its thread for its whole life: one thread per concurrent stream.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=256))
    ext_grpc.add_ExternalProcessorServicer_to_server(Floor(), server)
    server.add_insecure_port(f"127.0.0.1:{sys.argv[2]}")
    server.start()
    print("listening", flush=True)  # noqa: T201
    server.wait_for_termination()


def _grpclib() -> None:
    # Imported by name: grpclib is not a dependency (nor typed for mypy where absent).
    const = importlib.import_module("grpclib.const")
    grpclib_server = importlib.import_module("grpclib.server")
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

    reply = _reply()

    class Floor:
        async def process(self, stream: Any) -> None:
            async for _ in stream:
                await stream.send_message(reply)

        def __mapping__(self) -> dict[str, Any]:
            return {
                _PROCESS: const.Handler(
                    self.process,
                    const.Cardinality.STREAM_STREAM,
                    ext.ProcessingRequest,
                    ext.ProcessingResponse,
                )
            }

    async def main() -> None:
        server = grpclib_server.Server([Floor()])
        await server.start("127.0.0.1", int(sys.argv[2]))
        print("listening", flush=True)  # noqa: T201
        await server.wait_closed()

    _run(main(), "uvloop")


def _sluicegate_h2() -> None:
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

    from sluicegate.epp._grpc import GrpcServer, GrpcStream, Method, frame

    framed = frame(_reply().SerializeToString())

    async def process(stream: GrpcStream) -> None:
        while (await stream.read()) is not None:
            stream.send_framed(framed)

    async def main() -> None:
        server = GrpcServer(
            {_PROCESS: Method(process, ext.ProcessingRequest)}, max_message_bytes=1 << 22
        )
        await server.start("127.0.0.1", int(sys.argv[2]))
        print("listening", flush=True)  # noqa: T201
        await asyncio.Event().wait()

    _run(main(), "uvloop")


def _run(coro: Any, loop: str) -> None:
    if loop == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


#: Variant name -> server (run in a child process: ``floor_main NAME PORT``).
FLOORS: Final[dict[str, Callable[[], None]]] = {
    "aio-asyncio": lambda: _aio([], "asyncio"),
    "aio-uvloop": lambda: _aio([]),
    "aio-read-write": _aio_read_write,
    "aio-options": lambda: _aio(
        [
            ("grpc.so_reuseport", 0),
            ("grpc.enable_retries", 0),
            ("grpc.max_concurrent_streams", 1 << 20),
            ("grpc.default_compression_algorithm", 0),
            ("grpc.http2.bdp_probe", 0),
            ("grpc.optimization_target", "throughput"),
        ]
    ),
    "sync-threads": _sync_threads,
    "grpclib": _grpclib,
    "sluicegate-h2": _sluicegate_h2,
}


def floor_main() -> None:
    """Serve one do-nothing variant: ``argv[1]`` names it, ``argv[2]`` is the port."""
    FLOORS[sys.argv[1]]()


async def measure_lean(port: int, pid: int, seconds: float, concurrency: int) -> dict[str, float]:
    """Closed loop of `LeanEnvoy` lifecycles on a picker or floor server (process `pid`).

    Returns lifecycles per CPU-second of `pid`, per wall second, its CPU share, errors.
    """
    from ._epp_load import RESPONSE, LeanEnvoy
    from ._upstream import BODY

    envoy = await LeanEnvoy.connect("127.0.0.1", port, BODY, RESPONSE)
    try:
        for _ in range(300):
            await envoy.lifecycle()
        done = 0
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                ok = await envoy.lifecycle()  # not `done += await`: that loses updates
                done += ok

        cpu = cpu_seconds(pid)
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - began
        cpu = cpu_seconds(pid) - cpu
    finally:
        envoy.close()
    return {
        "per cpu-s": done / cpu if cpu > 0 else 0.0,
        "lifecycles/s": done / wall,
        "cpu share": cpu / wall,
        "errors": envoy.errors,
    }


def _available(name: str) -> bool:
    if name != "grpclib":
        return True
    return importlib.util.find_spec("grpclib") is not None


def main() -> None:  # pragma: no cover - a manual measurement
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    names = [n for n in (sys.argv[3:] or list(FLOORS)) if _available(n)]
    results: dict[str, list[float]] = {n: [] for n in names}
    os.sched_setaffinity(0, {1})
    code = "from sluicegate.bench._epp_floors import floor_main; floor_main()"
    for round_ in range(rounds):
        for name in names:  # interleaved: each round visits every variant
            port = free_port()
            args = ["taskset", "-c", "0", sys.executable, "-c", code, name, str(port)]
            proc = subprocess.Popen(args, stdout=subprocess.PIPE)
            try:
                assert proc.stdout is not None
                assert b"listening" in proc.stdout.readline()
                import uvloop

                r = uvloop.run(measure_lean(port, proc.pid, seconds, 64))
            finally:
                proc.terminate()
                proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()
            results[name].append(r["per cpu-s"])
            print(  # noqa: T201
                f"round {round_} {name:15s} {r['per cpu-s']:7,.0f} lifecycles per CPU-s "
                f"(server at {r['cpu share']:.0%} of a core, {r['errors']:.0f} errors)",
                flush=True,
            )
    print("median lifecycles per CPU-second:")  # noqa: T201
    for name, values in results.items():
        values.sort()
        print(f"  {name:15s} {values[len(values) // 2]:7,.0f}   {[round(v) for v in values]}")  # noqa: T201


if __name__ == "__main__":
    main()
