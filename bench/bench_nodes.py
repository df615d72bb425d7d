"""Several nodes on one PostgreSQL: the engine benchmark against 1, 2 and 3 nodes.

    .venv/bin/python -m bench.bench_nodes [--nodes 1 2 3] [--lease-ms 2000] [--scenarios …]

Starts a throwaway PostgreSQL cluster with its default (durable) settings, or uses
DATABASE_URL's server, and for each node count a new database, the nodes and a local
sink. Scenarios: registrations (spread over the nodes), burst (3000 due at one instant),
spread (1000 over 10 s: lateness), and, with two nodes or more, failover (the node holding
the most leases killed with -9 just after the nodes claimed a burst: the time until its
tasks are sent by the others). Prints figures and the CPU time of each part (nodes,
PostgreSQL, sink: all on the same cores); asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from bench.bench_engine import CLIENTS, now_ms, wait_arrivals
from bench.common import RawClient, Server, Sink, percentile, register_owner, task_body
from tests.support.postgres import PostgresServer, find_bin_dir, throwaway_cluster

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def children_cpu_s(parent: int) -> float:
    """CPU seconds of ``parent`` and its children (PostgreSQL's backends), those alive now
    plus what exited children left in the parent's cumulative counters."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            total += (int(fields[11]) + int(fields[12])) / _TICK
    fields = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()
    own = sum(int(f) for f in fields[11:15]) / _TICK  # utime stime cutime cstime
    return total + own


class Cluster:
    """``count`` nodes on one database, and the sink they call."""

    def __init__(self, url: str, count: int, lease_ms: int) -> None:
        self.url = url
        env = {
            "DATABASE_URL": url,
            "LEASE_MS": str(lease_ms),
            "EGRESS_ALLOW": "127.0.0.1/32",
            "CIPHER_KEY": secrets.token_urlsafe(32),  # the same on every node
        }
        self.nodes = [Server(**env).start() for _ in range(count)]
        self.sink = Sink()
        self.gone_cpu_s = [0.0] * count  # what killed processes of each node had used

    def kill(self, index: int) -> None:
        """kill -9 a node, keeping the CPU time it used for the split."""
        node = self.nodes[index]
        assert node.proc is not None
        self.gone_cpu_s[index] += node.cpu_s()
        node.proc.kill()

    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def cpu(self) -> dict[str, float]:
        parts = {f"node{i}": node.cpu_s() + self.gone_cpu_s[i] for i, node in enumerate(self.nodes)}
        parts["sink"] = cpu_s(self.sink.proc.pid)
        return parts

    def stop(self) -> None:
        for node in self.nodes:
            assert node.proc is not None
            node.proc.kill()
        self.sink.proc.kill()


async def register_spread(
    ports: list[int], headers: dict[str, str], bodies: list[bytes]
) -> tuple[list[str], list[float], int, float]:
    """Register over CLIENTS connections, spread over the nodes."""
    queue = list(enumerate(bodies))
    ids = [""] * len(bodies)
    latencies: list[float] = []
    errors = 0

    async def worker(port: int) -> None:
        nonlocal errors
        client = RawClient(port)
        while queue:
            index, body = queue.pop()
            started = time.perf_counter()
            status, payload = await client.request("POST", "/v1/queues/register", body, headers)
            latencies.append(time.perf_counter() - started)
            if status == 201:
                ids[index] = payload.split(b'"id":"', 1)[1].split(b'"', 1)[0].decode()
            else:
                errors += 1
        client.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(ports[i % len(ports)]) for i in range(CLIENTS)))
    return ids, latencies, errors, time.perf_counter() - started


async def registrations(cluster: Cluster, headers: dict[str, str]) -> str:
    bodies = [task_body(cluster.sink.url(), executionDelay=3_600_000) for _ in range(6000)]
    await register_spread(cluster.ports(), headers, bodies[:500])  # warm-up
    _, latencies, errors, wall = await register_spread(cluster.ports(), headers, bodies)
    return (
        f"registrations: {len(bodies) / wall:,.0f}/s ({CLIENTS} clients), "
        f"p50 {percentile(latencies, 50) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 99) * 1000:.1f} ms, errors {errors}"
    )


async def burst(cluster: Cluster, headers: dict[str, str]) -> str:
    cluster.sink.reset()
    due = now_ms() + 20_000  # registering 3000 takes several seconds on this machine
    bodies = [task_body(cluster.sink.url(), executeAt=due) for _ in range(3000)]
    _, _, errors, wall = await register_spread(cluster.ports(), headers, bodies)
    arrivals = await wait_arrivals(cluster.sink, 3000, 60)
    times = sorted(a[0] * 1000 - due for a in arrivals)
    span_s = max((times[-1] - times[0]) / 1000, 1e-3)
    doubled = len(arrivals) - len({a[1] for a in arrivals})
    return (
        f"burst: 3000 due at one instant (registered in {wall:.1f} s, errors {errors}); "
        f"arrived {len(arrivals)} (doubled {doubled}); first +{times[0]:.0f} ms, "
        f"last +{times[-1]:.0f} ms after due; {len(times) / span_s:,.0f} calls/s"
    )


async def spread(cluster: Cluster, headers: dict[str, str]) -> str:
    cluster.sink.reset()
    start = now_ms() + 8000
    bodies = [task_body(cluster.sink.url(), executeAt=start + i * 10) for i in range(1000)]
    ids, _, errors, _ = await register_spread(cluster.ports(), headers, bodies)
    planned = {task_id: start + i * 10 for i, task_id in enumerate(ids)}
    arrivals = await wait_arrivals(cluster.sink, 1000, 40)
    lateness = [a[0] * 1000 - planned[a[1]] for a in arrivals if a[1] in planned]
    return (
        f"spread: 1000 over 10 s (errors {errors}); arrived {len(arrivals)}; lateness "
        f"p50 {percentile(lateness, 50):.1f} ms, p99 {percentile(lateness, 99):.1f} ms "
        f"(target <= 20 ms), max {max(lateness):.1f} ms"
    )


LEASES_BY_NODE = "SELECT lease_owner, count(*) FROM task WHERE in_flight GROUP BY lease_owner"


async def busiest_node(cluster: Cluster) -> tuple[int, int]:
    """The node holding the most leases now, and how many (a lease names its node's
    process: host-pid-random, tasks_server/store/postgres/base.py)."""
    async with await psycopg.AsyncConnection.connect(cluster.url) as conn:
        rows = await (await conn.execute(LEASES_BY_NODE)).fetchall()
    held = {int(owner.rsplit("-", 2)[1]): count for owner, count in rows if owner}
    pids = [node.proc.pid if node.proc else 0 for node in cluster.nodes]
    index = max(range(len(pids)), key=lambda i: held.get(pids[i], 0))
    return index, held.get(pids[index], 0)


async def failover(cluster: Cluster, headers: dict[str, str], lease_ms: int) -> str:
    """600 tasks due at one instant; 100 ms before it (after the nodes claimed their
    shares, 250 ms ahead, before any call left) the node holding the most of them is
    killed. Its share is sent by the others once its leases end: those arrive as attempt
    2. The gap is the time from the kill to the last of them sent again."""
    cluster.sink.reset()
    due = now_ms() + 8000
    bodies = [task_body(cluster.sink.url(), executeAt=due) for _ in range(600)]
    ids, _, errors, _ = await register_spread(cluster.ports(), headers, bodies)
    while now_ms() < due - 130:
        await asyncio.sleep(0.005)
    victim, held = await busiest_node(cluster)
    cluster.kill(victim)
    killed_at = now_ms()
    arrivals = await wait_arrivals(cluster.sink, 600, 30 + lease_ms / 1000)
    resent = sorted(a[0] * 1000 - killed_at for a in arrivals if a[2] == "2")
    lost = len(set(ids) - {a[1] for a in arrivals})
    cluster.nodes[victim].start()  # back for the next scenario
    if not resent:
        return f"failover: node {victim} had claimed nothing of 600 (lost {lost}, errors {errors})"
    return (
        f"failover: node {victim} killed holding {held} of 600 leases, {len(resent)} sent again; "
        f"failover gap (kill to the last of them sent again) {resent[-1]:.0f} ms, the first "
        f"{resent[0]:.0f} ms (lease {lease_ms} ms; target <= {lease_ms + 1000} ms); lost {lost}"
    )


@contextlib.contextmanager
def postgres() -> Iterator[PostgresServer]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield PostgresServer(url)
        return
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed (install.sh installs it)")
    with throwaway_cluster(bin_dir, durable=True) as server:
        yield server


SCENARIOS = ("registrations", "burst", "spread", "failover")


async def run_nodes(
    pg: PostgresServer, count: int, lease_ms: int, scenarios: tuple[str, ...] = SCENARIOS
) -> None:
    url = pg.create_database()
    cluster = Cluster(url, count, lease_ms)
    postmaster = pg.postmaster_pid()
    pg_before = children_cpu_s(postmaster) if postmaster else 0.0
    started = time.monotonic()
    try:
        headers = await register_owner(cluster.nodes[0].port, "bench")
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"-- {count} node(s) on one PostgreSQL (load average {load})")
        for scenario in (registrations, burst, spread):
            if scenario.__name__ in scenarios:
                print("   " + await scenario(cluster, headers))
        if count > 1 and "failover" in scenarios:
            print("   " + await failover(cluster, headers, lease_ms))
        wall = time.monotonic() - started
        split = cluster.cpu()
        if postmaster:
            split["postgres"] = children_cpu_s(postmaster) - pg_before
        shares = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in split.items())
        print(f"   CPU over {wall:.0f} s of wall time (2 cores shared): {shares}")
    finally:
        cluster.stop()
        pg.drop_database(url)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--lease-ms", type=int, default=2000)
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    args = parser.parse_args()
    with postgres() as pg:
        for count in args.nodes:
            await run_nodes(pg, count, args.lease_ms, tuple(args.scenarios))


if __name__ == "__main__":
    asyncio.run(main())
