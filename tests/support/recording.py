"""A Dispatcher that records calls and answers with scripted outcomes (layer-2 tests).

It tests scheduling logic only; delivery is tested with real targets in test_dispatch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tasks_server.dispatch import Prepared
from tasks_server.models import Call, Outcome


class RecordingDispatcher:
    def __init__(self, script: Callable[[Call], Outcome] | None = None) -> None:
        self.calls: list[Call] = []
        self.script = script or (lambda call: Outcome(status=200, body=b"ok"))
        self.hold = False  # when True, calls stay in flight until release()
        self._held: list[tuple[Call, asyncio.Future[Outcome]]] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for _, future in self._held:
            future.cancel()

    @property
    def in_flight(self) -> int:
        return len(self._held)

    @property
    def waiting_for_host(self) -> int:
        return 0

    @property
    def draining_host_queues(self) -> bool:
        return False

    def prepare(self, call: Call) -> Prepared:
        return Prepared(call)

    def submit(self, call: Call | Prepared) -> asyncio.Future[Outcome]:
        if isinstance(call, Prepared):
            call = call.call
        self.calls.append(call)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        if self.hold:
            self._held.append((call, future))
        else:
            future.set_result(self.script(call))
        return future

    def release(self) -> None:
        held, self._held = self._held, []
        for call, future in held:
            if not future.done():
                future.set_result(self.script(call))
