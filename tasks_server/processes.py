"""Several API processes on one SQLite database (API_PROCESSES > 1).

``serve`` binds the listening socket once and forks the processes that serve it. One of
them runs the engine (the scheduler and the other loops a server runs once: schedules,
alerts, retention, backups): the one holding an exclusive ``flock`` on
``<db>.scheduler.lock`` (``Election``). The others serve the API only, each with a thread
blocked on that lock, so the kernel hands the engine to one of them the moment its holder
dies.

What the API tells the engine in memory with one process (a task became due, stopped
being due, a flow-control key changed, a schedule moved) reaches it here through
``Relay``: in the engine's process a call goes straight to the scheduler; in the others it
becomes an item of a datagram on a unix socket pair made before the fork, which the
engine's process reads and turns into the same call. Waiters for a task's or a run's end
are woken the other way: every wake is passed to every other process. Nothing here polls
the database.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import json
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .clock import Clock
from .engine.scheduler import Scheduler
from .engine.waiters import FinalWaiters
from .models import Attempt, FlowControl, FlowPeriod
from .schedules.runner import ScheduleRunner

logger = logging.getLogger(__name__)

FlowRef = tuple[str, str]

# a datagram holds the items of one event-loop turn, split below this size
DATAGRAM_BYTES = 32_768
# datagrams kept while the receiving side does not read (its queue is full, or the engine
# is changing hands); beyond this the oldest go, and what they announced is found by the
# engine's next read of the near future from the database instead
BACKLOG_DATAGRAMS = 4096


@dataclass(frozen=True, slots=True)
class Channels:
    """The unix datagram socket pairs of one server, made before the fork so that every
    process holds every end: ``engine`` carries wake-ups to the process running the
    engine (whichever it is: only that one reads), ``processes[i]`` wakes process i's
    waiters. Socket pairs have no name in the file system: no other program can send."""

    index: int  # this process's number, 0 to count - 1
    engine: tuple[socket.socket, socket.socket]  # (read end, send end)
    processes: tuple[tuple[socket.socket, socket.socket], ...]

    @classmethod
    def make(cls, count: int) -> Channels:
        def pair() -> tuple[socket.socket, socket.socket]:
            read, send = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            for end in (read, send):
                end.setblocking(False)
            return read, send

        return cls(0, pair(), tuple(pair() for _ in range(count)))

    def of_process(self, index: int) -> Channels:
        return Channels(index, self.engine, self.processes)


class Election:
    """Who runs the engine: the process holding ``<db>.scheduler.lock`` exclusively. A
    thread waits for it in ``flock`` (the kernel grants it when the holder's process ends,
    however it ends), then wakes the event loop. The lock is never given back while the
    process lives."""

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(f"{database.name}.scheduler.lock")
        self.resigned = asyncio.Event()
        # whether this process has been asked to stop (the CLI tells it uvicorn's flag):
        # a process draining its requests after SIGTERM must not take the engine over
        self.stopping: Callable[[], bool] = lambda: False
        self._file: IO[bytes] | None = None

    async def won(self) -> None:
        loop = asyncio.get_running_loop()
        elected: asyncio.Future[None] = loop.create_future()
        self._file = self.path.open("ab")

        def settle() -> None:
            if not elected.done():
                elected.set_result(None)

        def wait(file: IO[bytes]) -> None:
            fcntl.flock(file, fcntl.LOCK_EX)
            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:  # the loop is closed: the process is ending anyway
                pass

        # a daemon thread: a process stopped while it waits does not wait for it
        threading.Thread(target=wait, args=(self._file,), name="election", daemon=True).start()
        await elected


class Outbox:
    """Items for one socket, sent as one datagram per event-loop turn (a burst of
    registrations costs a send per turn, not per task)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._items: list[list[Any]] = []
        self._backlog: collections.deque[bytes] = collections.deque()
        self._waiting = False  # for the socket to take data again

    def put(self, item: list[Any]) -> None:
        if not self._items:
            asyncio.get_running_loop().call_soon(self._flush)
        self._items.append(item)

    def _flush(self) -> None:
        items, self._items = self._items, []
        for datagram in _datagrams(items):
            if len(self._backlog) >= BACKLOG_DATAGRAMS:
                self._backlog.popleft()
                logger.warning("wake-ups dropped: the engine's process does not read them")
            self._backlog.append(datagram)
        self._send()

    def _send(self) -> None:
        while self._backlog:
            try:
                self._sock.send(self._backlog[0])
            except BlockingIOError:
                if not self._waiting:
                    self._waiting = True
                    asyncio.get_running_loop().add_writer(self._sock, self._writable)
                return
            self._backlog.popleft()

    def _writable(self) -> None:
        self._waiting = False
        asyncio.get_running_loop().remove_writer(self._sock)
        self._send()

    def close(self) -> None:
        if self._waiting:
            asyncio.get_running_loop().remove_writer(self._sock)
            self._waiting = False


def _datagrams(items: list[list[Any]]) -> list[bytes]:
    encoded = [json.dumps(item, separators=(",", ":")) for item in items]
    out: list[bytes] = []
    chunk: list[str] = []
    size = 0
    for text in encoded:
        if chunk and size + len(text) + 1 > DATAGRAM_BYTES:
            out.append(f"[{','.join(chunk)}]".encode())
            chunk, size = [], 0
        chunk.append(text)
        size += len(text) + 1
    if chunk:
        out.append(f"[{','.join(chunk)}]".encode())
    return out


class Relay:
    """What the API and the store tell the engine, whichever process runs it: the calls
    of the scheduler's in-memory interface (api/services.py ``Notifier``). In the engine's
    process they go straight to its scheduler; in another they travel as datagram items,
    and the engine's process makes the same call of its own Relay when one arrives
    (``_deliver``). ``leading`` is set once, when this process wins the election."""

    def __init__(
        self,
        scheduler: Scheduler,
        runs: FinalWaiters,
        channels: Channels,
        clock: Clock,
        horizon_ms: int,
    ) -> None:
        self.scheduler = scheduler
        self.runs = runs
        self.schedules: ScheduleRunner | None = None  # set once built (it needs the Relay)
        self.leading = False
        self._channels = channels
        self._clock = clock
        self._horizon_ms = horizon_ms
        self._to_engine = Outbox(channels.engine[1])
        self._to_others = [
            Outbox(send)
            for index, (_read, send) in enumerate(channels.processes)
            if index != channels.index
        ]
        scheduler.waiters.on_wake = lambda task_id: self._tell_others(["w", task_id])
        runs.on_wake = lambda run_id: self._tell_others(["r", run_id])
        self.schedule_wakeups = _ScheduleWakeups(self)

    # -- the scheduler's interface --------------------------------------------------------

    def notify(
        self, task_id: str, due_at_ms: int, priority: int = 0, flow: FlowRef | None = None
    ) -> None:
        if self.leading:
            self.scheduler.notify(task_id, due_at_ms, priority, flow)
        elif due_at_ms < self._clock.now_ms() + self._horizon_ms:
            # (the scheduler keeps no later task in memory: it reads those when they near)
            self._to_engine.put(["n", task_id, due_at_ms, priority, flow])

    def forget(self, task_id: str) -> None:
        if self.leading:
            self.scheduler.forget(task_id)
        else:
            self._to_engine.put(["f", task_id])

    def configure_flow(self, owner_id: str, flow: FlowControl, paused: bool | None = None) -> None:
        if self.leading:
            self.scheduler.configure_flow(owner_id, flow, paused)
        else:
            fields = [flow.key, flow.rate, flow.period.value, flow.parallelism]
            self._to_engine.put(["c", owner_id, fields, paused])

    def schedule_moved(self, next_at_ms: int | None) -> None:
        if self.leading:
            assert self.schedules is not None
            self.schedules.notify(next_at_ms)
        else:
            self._to_engine.put(["s", next_at_ms])

    def flow_in_flight(self, flow: FlowRef) -> int:
        """This process's calls of the key: 0 outside the engine's process."""
        return self.scheduler.flow_in_flight(flow)

    def wait_final(self, task_id: str) -> asyncio.Future[None]:
        return self.scheduler.wait_final(task_id)

    def stop_waiting(self, task_id: str, future: asyncio.Future[None]) -> None:
        self.scheduler.stop_waiting(task_id, future)

    def free_claims(self) -> int:
        """How many attempts the store may claim for this process's scheduler: none
        outside the engine's process, so a workflow step released there is announced
        (``notify``) instead of being handed over already claimed."""
        return self.scheduler.free_claims() if self.leading else 0

    def adopt(self, attempt: Attempt) -> None:
        if not self.leading:  # free_claims said none may be claimed here
            raise RuntimeError(f"attempt of {attempt.task_id} claimed outside the engine")
        self.scheduler.adopt(attempt)

    # -- the sockets -----------------------------------------------------------------------

    def start(self) -> None:
        """Read the wakes other processes send this one (from now until ``close``)."""
        read = self._channels.processes[self._channels.index][0]
        asyncio.get_running_loop().add_reader(read, self._receive, read)

    def lead(self) -> None:
        """This process runs the engine from now on: read what the others send it."""
        self.leading = True
        read = self._channels.engine[0]
        asyncio.get_running_loop().add_reader(read, self._receive, read)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._channels.processes[self._channels.index][0])
        if self.leading:
            loop.remove_reader(self._channels.engine[0])
        for outbox in (self._to_engine, *self._to_others):
            outbox.close()

    def _tell_others(self, item: list[Any]) -> None:
        for outbox in self._to_others:
            outbox.put(item)

    def _receive(self, sock: socket.socket) -> None:
        while True:
            try:
                datagram = sock.recv(DATAGRAM_BYTES * 2)
            except BlockingIOError:
                return
            for item in json.loads(datagram):
                try:
                    self._deliver(item)
                except Exception:  # one bad item must not stop the others
                    logger.exception("a wake-up from another process failed: %r", item)

    def _deliver(self, item: list[Any]) -> None:
        kind = item[0]
        if kind == "n":
            _, task_id, due_at_ms, priority, flow = item
            self.notify(task_id, due_at_ms, priority, None if flow is None else tuple(flow))
        elif kind == "f":
            self.forget(item[1])
        elif kind == "c":
            _, owner_id, (key, rate, period, parallelism), paused = item
            flow = FlowControl(key, rate, FlowPeriod(period), parallelism)
            self.configure_flow(owner_id, flow, paused)
        elif kind == "s":
            self.schedule_moved(item[1])
        elif kind == "w":
            self.scheduler.waiters.wake_here(item[1])
        elif kind == "r":
            self.runs.wake_here(item[1])


class _ScheduleWakeups:
    """The schedule runner's interface (``notify``), through the Relay."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def notify(self, next_at_ms: int | None) -> None:
        self._relay.schedule_moved(next_at_ms)
