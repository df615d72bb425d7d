"""A fast local HTTP sink for benchmarks: records (wall time, task id, attempt) per call.

Run: python -m bench.sink PORT [STATUS]. ``GET /__arrivals`` answers the records as JSON
lines, ``GET /__count`` how many there are, and ``POST /__reset`` clears them. Every other
request answers STATUS (default 200).

Wait for arrivals by polling ``/__count``: answering ``/__arrivals`` encodes every record
on the sink's one thread, a few ms for a few thousand, and calls arriving meanwhile are
stamped that much late.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time


class Sink(asyncio.Protocol):
    arrivals: list[tuple[float, str, str]] = []
    status = 200

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1")
            length = 0
            task_id = attempt = ""
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                lowered = name.lower()
                if lowered == "content-length":
                    length = int(value)
                elif lowered == "x-tasks-queue-id":
                    task_id = value.strip()
                elif lowered == "x-tasks-attempt":
                    attempt = value.strip()
            if len(self.buffer) < head_end + 4 + length:
                return
            self.buffer = self.buffer[head_end + 4 + length :]
            self.answer(head.split(" ", 2)[:2], task_id, attempt)

    def answer(self, request_line: list[str], task_id: str, attempt: str) -> None:
        _, path = request_line
        if path == "/__arrivals":
            body = "\n".join(json.dumps(a) for a in Sink.arrivals).encode()
        elif path == "/__count":
            body = b"%d" % len(Sink.arrivals)
        elif path == "/__reset":
            Sink.arrivals = []
            body = b"ok"
        else:
            Sink.arrivals.append((time.time(), task_id, attempt))
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n\r\nok" % Sink.status
            )
            return
        self.transport.write(  # type: ignore[attr-defined]
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) > 2:
        Sink.status = int(sys.argv[2])
    import uvloop

    uvloop.run(main(int(sys.argv[1])))
