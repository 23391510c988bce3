"""The gateway's upstream client: keep-alive connections to any number of backends,
one pool per base URL, over `_http1`'s connections (issue 17).

* At most `max_connections` connections per backend; a request beyond waits for a free
  one within `connect_timeout` (the connect itself has the same bound).
* An idle connection is closed after `KEEPALIVE` seconds (shorter than uvicorn's 5 s,
  so the backend rarely closes one under a request about to be sent on it); one lazily
  re-armed timer per pool, not one per connection.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import TYPE_CHECKING, Final, final
from urllib.parse import urlsplit

from ._http1 import (
    ConnectError,
    ConnectTimeout,
    Response,
    Target,
    _Connection,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["Client"]

#: Seconds an idle keep-alive connection is kept.
KEEPALIVE: Final = 4.0


@final
class _Pool:
    """The connections to one backend: idle ones (most recently used last), a bound on
    all open ones, and the requests waiting for one under that bound."""

    __slots__ = (
        "_expiry",
        "_given_up",
        "_waiters",
        "closing",
        "connect_timeout",
        "conns",
        "host",
        "hostline",
        "idle",
        "limit",
        "loop",
        "port",
        "prefix",
        "read_timeout",
        "ssl",
    )

    def __init__(
        self,
        base: str,
        limit: int,
        connect_timeout: float | None,
        read_timeout: float | None,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base!r}")
        self.loop = asyncio.get_running_loop()
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = (
            (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        )
        self.prefix = parts.path.rstrip("/").encode()
        self.hostline = b"host: %s\r\n" % parts.netloc.encode("idna")
        self.limit, self.connect_timeout, self.read_timeout = limit, connect_timeout, read_timeout
        self.idle: list[_Connection] = []
        self.conns: set[_Connection] = set()
        self.closing = False
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        #: Waiters that gave up and may still be in `_waiters` (see `_abandoned`).
        self._given_up = 0
        self._expiry: asyncio.TimerHandle | None = None

    async def acquire(self) -> _Connection:
        """A connection for one request: the most recently used idle one, else a new
        one, else (at the bound) the next one freed."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.busy = True
                return conn
        try:
            async with asyncio.timeout(self.connect_timeout):
                return await self._acquire_slow()
        except TimeoutError:
            where = f"{self.host}:{self.port}"
            raise ConnectTimeout(
                f"no connection to {where} within {self.connect_timeout:g} s"
            ) from None

    async def _acquire_slow(self) -> _Connection:
        while True:
            while self.idle:
                conn = self.idle.pop()
                if not conn.closed:
                    conn.busy = True
                    return conn
            if len(self.conns) < self.limit:
                return await self._connect()
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # pass the turn on
                else:
                    self._abandoned()
                raise

    def _abandoned(self) -> None:
        """A waiter gave up (timeout, cancel). It stays in the queue, where `_wake_one`
        skips it, and may have been dropped from it already (a free connection came
        between its cancellation and its task resuming): removing it by value would
        raise then, and cost O(waiters) each time, O(n^2) when a stuck backend times
        out a crowd. The queue is compacted once half of it is given up."""
        self._given_up += 1
        if self._given_up * 2 > len(self._waiters):
            self._waiters = collections.deque(w for w in self._waiters if not w.done())
            self._given_up = 0

    async def _connect(self) -> _Connection:
        conn = _Connection(self)
        conn.busy = True
        self.conns.add(conn)  # counts against the bound while connecting
        try:
            await self.loop.create_connection(lambda: conn, self.host, self.port, ssl=self.ssl)
        except OSError as exc:
            self.forget(conn)
            raise ConnectError(f"could not connect to {self.host}:{self.port}: {exc}") from exc
        except BaseException:
            self.forget(conn)
            raise
        return conn

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def park(self, conn: _Connection) -> None:
        """`conn` is free and may be reused."""
        if self.closing:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)
        if self._expiry is None:
            self._expiry = self.loop.call_at(conn.idle_since + KEEPALIVE, self._expire)
        if self._waiters:
            self._wake_one()

    def forget(self, conn: _Connection) -> None:
        """`conn` closed."""
        if conn in self.conns:
            self.conns.discard(conn)
            if conn in self.idle:
                self.idle.remove(conn)
            if self._waiters:
                self._wake_one()

    def _expire(self) -> None:
        """Close the connections idle for `KEEPALIVE` (the oldest are first in the list)."""
        self._expiry = None
        now, idle = self.loop.time(), self.idle
        while idle and idle[0].idle_since + KEEPALIVE <= now:
            idle.pop(0).close()
        if idle:
            self._expiry = self.loop.call_at(idle[0].idle_since + KEEPALIVE, self._expire)

    def close(self) -> None:
        self.closing = True
        if self._expiry is not None:
            self._expiry.cancel()
        for conn in list(self.conns):
            conn.close()


@final
class Client:
    """Keep-alive connections to any number of backends, one pool per base URL.

    Args:
        connect_timeout: seconds to connect, or to wait for a free connection at the
            bound; None: no limit.
        read_timeout: seconds a read may wait for the backend's next bytes (the head,
            then each part of the body); None: no limit.
        max_connections: connections open at once to one backend.
        ssl_context: for https backends; None: the system's defaults.
    """

    __slots__ = ("_pools", "_ssl", "closed", "connect_timeout", "max_connections", "read_timeout")

    def __init__(
        self,
        *,
        connect_timeout: float | None = 5.0,
        read_timeout: float | None = 600.0,
        max_connections: int = 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.closed = False
        self._ssl = ssl_context
        self._pools: dict[str, _Pool] = {}

    def _pool(self, base: str) -> _Pool:
        pool = self._pools.get(base)
        if pool is None:
            if self.closed:
                raise RuntimeError("the client is closed")
            pool = _Pool(
                base, self.max_connections, self.connect_timeout, self.read_timeout, self._ssl
            )
            self._pools[base] = pool
        return pool

    async def request(
        self,
        method: str,
        target: Target,
        *,
        data: bytes | bytearray | None = None,
        headers: Iterable[tuple[bytes, bytes]] = (),
        allow_redirects: bool = False,
    ) -> Response:
        """Send a request and wait for the answer's head (never follows redirects).

        `headers` go as given (hop-by-hop ones, host and content-length are the
        caller's to leave out); host and content-length are added.

        Raises:
            ConnectError, ConnectTimeout: no connection.
            ReadTimeout, ConnectionBroken, ProtocolError: no valid answer head.
        """
        del allow_redirects  # aiohttp's keyword; redirects are relayed, never followed
        if method == "HEAD":
            raise ValueError("HEAD is not supported (its answer has no body to frame)")
        pool = self._pool(target.base)
        conn = await pool.acquire()
        try:
            body = data or b""
            parts: list[bytes | bytearray] = [
                method.encode(),
                b" ",
                pool.prefix,
                target.path,
                b" HTTP/1.1\r\n",
                pool.hostline,
            ]
            for name, value in headers:
                parts += (name, b": ", value, b"\r\n")
            if body or method not in ("GET", "OPTIONS"):
                parts.append(b"content-length: %d\r\n" % len(body))
            parts.append(b"\r\n")
            assert conn.transport is not None
            if len(body) > 65536:
                conn.transport.write(b"".join(parts))
                conn.transport.write(body)
            else:
                parts.append(body)
                conn.transport.write(b"".join(parts))
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait()
        except BaseException:
            conn.busy = False
            conn.close()
            conn.finish()
            raise
        return Response(conn)

    async def close(self) -> None:
        """Close every connection (a request in flight fails)."""
        self.closed = True
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
