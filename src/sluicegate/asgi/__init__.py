"""The ASGI toolkit the gateway and the simulator share (not part of `import sluicegate`).

One small module, as Starlette's ``types.py`` is: the ASGI type aliases, reading a
request body (with a size limit and a hook to count the bytes held), the lifespan
handshake, and serving an app under uvicorn on a socket bound beforehand (port 0 works,
the URL is known before the first request) with the settings both servers use.
`HttpServer` is the lean HTTP/1.1 server the gateway faces its clients with, hostile
client limits (header size, slow headers and bodies, connection cap) built in; under
uvicorn the same limits come from the gateway's protocol class, passed in as `http`.
"""

from __future__ import annotations

from ._server import HttpServer, Limits, Replies, shed_oldest
from ._toolkit import (
    App,
    BodyTooLarge,
    ClientGone,
    Message,
    Receive,
    Scope,
    Send,
    Served,
    lifespan,
    listen,
    read_body,
    run,
    serving,
    url_of,
    uvicorn_server,
)

__all__ = [
    "App",
    "BodyTooLarge",
    "ClientGone",
    "HttpServer",
    "Limits",
    "Message",
    "Receive",
    "Replies",
    "Scope",
    "Send",
    "Served",
    "lifespan",
    "listen",
    "read_body",
    "run",
    "serving",
    "shed_oldest",
    "url_of",
    "uvicorn_server",
]
