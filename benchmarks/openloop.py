"""Open-loop HTTP load: requests at fixed times, whatever the server answers.

    python -m benchmarks.openloop --url URL --body FILE --rate R --seconds S [--max-requests N]

Request i is due at t0 + i / rate. Its latency runs from that *scheduled* time to the last byte
of the answer, so a server that stalls is charged for every request it held up, including the
ones not yet sent (no coordinated omission). Requests go over a pool of persistent HTTP/1.1
keep-alive connections (raw asyncio streams, uvloop when installed: one core offers ~1,000
req/s where httpx would not); a request takes an idle connection, or opens a new one while
fewer than `max_connections` exist, else waits for one (that wait is part of its latency).

The generator checks itself: `lag` is how late each request's task started against its
scheduled time. A lag p99 above `behind_ms` means the generator, not the server, set the pace.
Bounded by duration and by count; what is still outstanding `timeout` seconds after the last
send is cancelled and counted. Prints one `OPENLOOP_JSON {...}` line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MARKER = "OPENLOOP_JSON "
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class OpenLoopResult:
    offered_rps: float
    seconds: float  # the scheduling window: scheduled requests / rate
    scheduled: int
    answered: int  # an HTTP answer, any status
    ok: int  # 2xx
    errors: int
    error_kinds: dict[str, int]
    statuses: dict[str, int]
    achieved_rps: float  # 2xx answers over the window (or until the last answer, if later)
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    lag_p50_ms: float | None
    lag_p99_ms: float | None
    lag_max_ms: float | None
    behind: bool  # the generator's own lag p99 exceeded behind_ms
    behind_ms: float
    connections_opened: int
    peak_in_flight: int  # requests sent or waiting for a connection, at most at once
    reconnects: int  # a kept-alive connection the server had closed: resent on a new one
    generator_cpu_seconds: float
    wall_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (NumPy's default), on a sorted list."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class _Closed(Exception):
    """The server closed a kept-alive connection before answering (nothing was read)."""


class OpenLoop:
    def __init__(
        self,
        url: str,
        body: bytes,
        *,
        rate: float,
        seconds: float,
        max_requests: int,
        max_connections: int,
        initial_connections: int,
        timeout: float,
        behind_ms: float,
        spin_ms: float = 1.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"plain http URLs only: {url}")
        self.host = parts.hostname
        self.port = parts.port or 80
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.rate = rate
        self.count = max(1, min(max_requests, math.ceil(rate * seconds)))
        self.max_connections = max_connections
        self.initial_connections = min(initial_connections, max_connections)
        self.timeout = timeout
        self.behind_ms = behind_ms
        self.spin = spin_ms / 1000
        self.idle: deque[Conn] = deque()  # FIFO: every connection stays in use, none goes stale
        self.waiters: deque[asyncio.Future[Conn | None]] = deque()
        self.open = 0
        self.busy = 0
        self.peak_busy = 0
        self.opened = 0
        self.reconnects = 0
        self.latencies: list[float] = []  # seconds, scheduled time -> answer, any status
        self.lags: list[float] = []
        self.statuses: dict[str, int] = {}
        self.kinds = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "unfinished": 0}
        self.last_answer = 0.0

    # -- connections ----------------------------------------------------------------------

    async def _connect(self) -> Conn:
        self.open += 1
        self.opened += 1
        try:
            return await asyncio.open_connection(self.host, self.port)
        except BaseException:
            self.open -= 1
            raise

    async def _acquire(self) -> Conn | None:
        """An idle connection, a new one below the cap, else the next one released."""
        if self.idle:
            return self.idle.popleft()
        if self.open < self.max_connections:
            return await self._connect()
        waiter: asyncio.Future[Conn | None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return await waiter

    def _release(self, conn: Conn | None) -> None:
        """Hand a healthy connection on (or back to the pool); None: it was closed."""
        if conn is None:
            self.open -= 1
        while self.waiters:
            waiter = self.waiters.popleft()
            if waiter.done():
                continue
            if conn is not None:
                waiter.set_result(conn)
            else:
                waiter.set_result(None)  # the waiter opens its own
            return
        if conn is not None:
            self.idle.append(conn)

    @staticmethod
    def _close(conn: Conn) -> None:
        try:
            conn[1].close()
        except Exception:  # closing a broken socket: nothing left to do
            return

    # -- one request ----------------------------------------------------------------------

    async def _exchange(self, conn: Conn) -> tuple[int, bool]:
        """Write the request, read one answer; (status, keep the connection)."""
        reader, writer = conn
        writer.write(self.request)
        try:
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            raise _Closed from exc
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _Closed from exc
            raise
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip().lower()
        if "content-length" in headers:
            await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        keep = headers.get("connection") != "close"
        return status, keep

    async def _one(self, due: float) -> None:
        self.lags.append(time.monotonic() - due)
        self.busy += 1
        self.peak_busy = max(self.peak_busy, self.busy)
        conn: Conn | None = None
        try:
            async with asyncio.timeout(self.timeout):
                for attempt in (0, 1):
                    try:
                        conn = await self._acquire()
                        if conn is None:
                            conn = await self._connect()
                    except OSError:
                        self.kinds["connect"] += 1
                        return
                    try:
                        status, keep = await self._exchange(conn)
                    except _Closed:
                        self._close(conn)
                        self._release(None)
                        conn = None
                        if attempt == 0:
                            self.reconnects += 1
                            continue
                        self.kinds["write"] += 1
                        return
                    except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError):
                        self.kinds["read"] += 1
                        self._close(conn)
                        self._release(None)
                        conn = None
                        return
                    now = time.monotonic()
                    self.last_answer = now
                    self.latencies.append(now - due)
                    key = str(status)
                    self.statuses[key] = self.statuses.get(key, 0) + 1
                    if keep:
                        self._release(conn)
                    else:
                        self._close(conn)
                        self._release(None)
                    conn = None
                    return
        except TimeoutError:
            self.kinds["timeout"] += 1
            if conn is not None:  # mid-exchange: the connection cannot be reused
                self._close(conn)
                self._release(None)
        finally:
            self.busy -= 1

    # -- the schedule ---------------------------------------------------------------------

    async def run(self) -> OpenLoopResult:
        loop = asyncio.get_running_loop()
        for _ in range(self.initial_connections):  # warm pool: the first requests find one
            try:
                self.idle.append(await self._connect())
            except OSError:
                break
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        tasks: set[asyncio.Task[None]] = set()
        # time.monotonic, not loop.time(): uvloop's clock ticks in whole milliseconds.
        t0 = time.monotonic() + 0.05
        interval = 1.0 / self.rate
        i = 0
        while i < self.count:
            now = time.monotonic()
            # Every request already due goes out now; the loop then sleeps until the next.
            while i < self.count and t0 + i * interval <= now:
                task = loop.create_task(self._one(t0 + i * interval))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if i >= self.count:
                break
            delay = t0 + i * interval - time.monotonic()
            # Event-loop timers tick in whole milliseconds: sleep to 1 ms short, then yield
            # (answers are read meanwhile) until the request is due.
            await asyncio.sleep(delay - self.spin if delay > 2 * self.spin else 0)
        sent_end = time.monotonic()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.timeout + 1)
            for task in pending:
                task.cancel()
            self.kinds["unfinished"] += len(pending)
            if pending:
                await asyncio.wait(pending, timeout=2)
        wall = time.monotonic() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        for conn in list(self.idle):
            self._close(conn)
        window = self.count / self.rate
        lat = sorted(x * 1000 for x in self.latencies)
        lags = sorted(x * 1000 for x in self.lags)
        ok = sum(n for s, n in self.statuses.items() if s.startswith("2"))
        answered = len(lat)
        bad_status = answered - ok
        kinds = dict(self.kinds, status=bad_status)
        span = max(window, (self.last_answer - t0) if answered else 0.0)
        lag_p99 = percentile(lags, 99)
        return OpenLoopResult(
            offered_rps=round(self.rate, 3),
            seconds=round(window, 3),
            scheduled=self.count,
            answered=answered,
            ok=ok,
            errors=sum(kinds.values()),
            error_kinds=kinds,
            statuses=dict(sorted(self.statuses.items())),
            achieved_rps=round(ok / span, 3) if span else 0.0,
            p50_ms=_r(percentile(lat, 50)),
            p90_ms=_r(percentile(lat, 90)),
            p99_ms=_r(percentile(lat, 99)),
            p999_ms=_r(percentile(lat, 99.9)),
            max_ms=_r(lat[-1] if lat else None),
            mean_ms=_r(sum(lat) / answered if answered else None),
            lag_p50_ms=_r(percentile(lags, 50)),
            lag_p99_ms=_r(lag_p99),
            lag_max_ms=_r(lags[-1] if lags else None),
            behind=lag_p99 is None or lag_p99 > self.behind_ms,
            behind_ms=self.behind_ms,
            connections_opened=self.opened,
            peak_in_flight=self.peak_busy,
            reconnects=self.reconnects,
            generator_cpu_seconds=round(
                cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 3
            ),
            wall_seconds=round(wall, 3),
            extra={"send_window_seconds": round(sent_end - t0, 3)},
        )


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def run_open_loop(
    url: str,
    body: bytes,
    *,
    rate: float,
    seconds: float,
    max_requests: int = 100_000,
    max_connections: int = 256,
    initial_connections: int = 8,
    timeout: float = 10.0,
    behind_ms: float = 2.0,
    spin_ms: float = 1.0,
) -> OpenLoopResult:
    """One open-loop run in this process (uvloop when installed)."""
    gen = OpenLoop(
        url,
        body,
        rate=rate,
        seconds=seconds,
        max_requests=max_requests,
        max_connections=max_connections,
        initial_connections=initial_connections,
        timeout=timeout,
        behind_ms=behind_ms,
        spin_ms=spin_ms,
    )
    try:
        import uvloop
    except ImportError:
        return asyncio.run(gen.run())
    return uvloop.run(gen.run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.openloop")
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--max-connections", type=int, default=256)
    parser.add_argument("--initial-connections", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--behind-ms", type=float, default=2.0)
    parser.add_argument(
        "--spin-ms", type=float, default=1.0, help="yield instead of sleeping this close to due"
    )
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0:
        parser.error("--rate and --seconds must be positive")
    result = run_open_loop(
        args.url,
        args.body.read_bytes(),
        rate=args.rate,
        seconds=args.seconds,
        max_requests=args.max_requests,
        max_connections=args.max_connections,
        initial_connections=args.initial_connections,
        timeout=args.timeout,
        behind_ms=args.behind_ms,
        spin_ms=args.spin_ms,
    )
    sys.stdout.write(MARKER + json.dumps(result.to_dict()) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
