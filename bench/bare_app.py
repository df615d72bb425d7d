"""The ceiling for registrations: a bare Starlette route on the same uvicorn set-up as the
server (uvloop, httptools, no access log) that only parses the JSON body and answers 201.

Run: python -m bench.bare_app PORT
"""

from __future__ import annotations

import json
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ANSWER = b'{"id":"0000000000000000000000AA","state":"RUNNING"}'


async def register(request: Request) -> Response:
    json.loads(await request.body())
    return Response(ANSWER, status_code=201, media_type="application/json")


app = Starlette(routes=[Route("/v1/queues/register", register, methods=["POST"])])


async def healthz(request: Request) -> Response:  # what the benchmark polls until ready
    return Response(b"ok")


app.add_route("/healthz", healthz, methods=["GET"])


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        server_header=False,
    )
