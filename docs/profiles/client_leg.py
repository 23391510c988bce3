"""The upstream client leg alone (issue 17): CPU per non-streamed request of this process
with aiohttp's client (tuned as the gateway's was) and with the gateway's own
`_client.Client`, 20,000 requests at concurrency 64, 3 interleaved rounds after a warm-up.

    taskset -c 1 python -c 'from sluicegate.bench._upstream import main; main()' --port 18203 &
    taskset -c 0 python docs/profiles/client_leg.py 18203
"""

import asyncio
import sys
import time

import aiohttp
import uvloop
from yarl import URL

from sluicegate.gateway._client import Client
from sluicegate.gateway._http1 import Target

PORT = int(sys.argv[1])
N = 20000
C = 64
BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
HDRS = [(b"content-type", b"application/json"), (b"user-agent", b"bench")]


async def run_aiohttp(s):
    url = URL(f"http://127.0.0.1:{PORT}/v1/chat/completions", encoded=True)
    hd = [(n.decode(), v.decode()) for n, v in HDRS]

    async def one(k):
        for _ in range(k):
            r = await s.request("POST", url, data=BODY, headers=hd, allow_redirects=False)
            await r.read()
            r.release()

    await asyncio.gather(*[one(N // C) for _ in range(C)])


async def run_lean(c):
    t = Target(f"http://127.0.0.1:{PORT}", b"/v1/chat/completions")

    async def one(k):
        for _ in range(k):
            r = await c.request("POST", t, data=BODY, headers=HDRS)
            await r.read()
            r.release()

    await asyncio.gather(*[one(N // C) for _ in range(C)])


async def main():
    s = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=600),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
    )
    c = Client()
    res = {"aiohttp": [], "lean": []}
    for _name, f in [("aiohttp", lambda: run_aiohttp(s)), ("lean", lambda: run_lean(c))]:
        await f()  # warm-up
    for _ in range(3):
        for name, f in [("aiohttp", lambda: run_aiohttp(s)), ("lean", lambda: run_lean(c))]:
            t0 = time.process_time()
            await f()
            res[name].append((time.process_time() - t0) / N * 1e6)
    for k, v in res.items():
        runs = " ".join(f"{x:.1f}" for x in v)
        sys.stdout.write(f"{k} us/request {runs} median {sorted(v)[1]:.1f}\n")
    await s.close()
    await c.close()


uvloop.run(main())
