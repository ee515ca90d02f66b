"""Closed-loop HTTP load: wrk with a Lua POST script, or an asyncio + httpx fallback; and
open-loop load (`benchmarks.openloop`, a pinned subprocess) at a fixed request rate.

Every run is bounded in time (the duration) and, except wrk's, also in request count.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.openloop import MARKER, OpenLoopResult
from benchmarks.servers import pin_prefix

LUA = Path(__file__).with_name("post.lua")
RECORD_LUA = Path(__file__).with_name("record.lua")

# One recorded request: start (time.monotonic() seconds), latency ms, HTTP status, version.
Record = tuple[float, float, int, str]


@dataclass
class LoadResult:
    tool: str
    connections: int
    seconds: float
    requests: int
    ok: int
    errors: int
    error_kinds: dict[str, int]
    rps: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    versions: dict[str, int] = field(default_factory=dict)
    started: float = 0.0  # time.monotonic() at start, to place a run on a timeline
    ended: float = 0.0
    records: list[Record] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms", "seconds"):
            if d[k] is not None:
                d[k] = round(d[k], 3)
        d.pop("started")
        d.pop("ended")
        d.pop("records")
        return d


def ensure_wrk(*, install: bool = True) -> str | None:
    """The wrk binary, installing the Debian package when missing and allowed (root + apt)."""
    found = shutil.which("wrk")
    if found or not install:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install_cmd = ["apt-get", "install", "-y", "-qq", "wrk"]
    # Install from the package lists as they are; refresh them once only when that fails.
    for cmd in (install_cmd, ["apt-get", "update", "-qq"], install_cmd):
        if shutil.which("wrk"):
            break
        try:
            subprocess.run(cmd, env=env, capture_output=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
    return shutil.which("wrk")


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else ""


class LoadGen:
    """Runs load against a URL with a body file, pinned to `cpu` when given."""

    def __init__(self, *, wrk: str | None, cpu: int | None, timeout_s: float = 10.0) -> None:
        self.wrk = wrk
        self.cpu = cpu
        self.timeout_s = timeout_s

    @property
    def tool(self) -> str:
        return "wrk" if self.wrk else "python-asyncio-httpx"

    def run(
        self,
        url: str,
        body_file: Path,
        *,
        connections: int,
        seconds: float,
        count_versions: bool = False,
        record: Path | None = None,
    ) -> LoadResult:
        """Closed-loop load for `seconds`; with `record` (a scratch file) every request is kept."""
        if self.wrk:
            return self._wrk(url, body_file, connections, seconds, count_versions, record)
        return self._python(
            url, body_file.read_bytes(), connections, seconds, count_versions, record is not None
        )

    def open_loop(
        self,
        url: str,
        body_file: Path,
        *,
        rate: float,
        seconds: float,
        max_connections: int = 256,
        max_requests: int = 100_000,
    ) -> OpenLoopResult:
        """`rate` requests per second at fixed times for `seconds` (benchmarks.openloop), in a
        process of its own on the load generator's core, as wrk runs."""
        argv = [
            *pin_prefix(self.cpu),
            sys.executable,
            "-m",
            "benchmarks.openloop",
            "--url",
            url,
            "--body",
            str(body_file),
            "--rate",
            f"{rate:.3f}",
            "--seconds",
            f"{seconds:g}",
            "--max-requests",
            str(max_requests),
            "--max-connections",
            str(max_connections),
            "--timeout",
            f"{self.timeout_s:g}",
        ]
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
            timeout=seconds + self.timeout_s + 60,
            check=False,
        )
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith(MARKER)), None)
        if line is None:
            raise RuntimeError(
                f"open-loop generator gave no summary (rc {out.returncode}): {out.stderr[-1500:]}"
            )
        return OpenLoopResult(**json.loads(line.removeprefix(MARKER)))

    # -- wrk ---------------------------------------------------------------------------------

    def _wrk(
        self,
        url: str,
        body_file: Path,
        connections: int,
        seconds: float,
        versions: bool,
        record: Path | None,
    ) -> LoadResult:
        assert self.wrk is not None
        whole = max(round(seconds), 1)  # wrk takes whole seconds
        # Recording needs one connection per thread (exact request/response pairs).
        threads = connections if record is not None else 1
        argv = [
            *pin_prefix(self.cpu),
            self.wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{whole}s",
            f"--timeout={self.timeout_s:g}s",
            "-s",
            str(RECORD_LUA if record is not None else LUA),
            url,
            "--",
            str(body_file),
        ]
        env = dict(os.environ, BENCH_COUNT_VERSIONS="1" if versions else "0")
        if record is not None:
            env["BENCH_RECORD_FILE"] = str(record)
        started = time.monotonic()
        out = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=seconds + 60, check=False
        )
        ended = time.monotonic()
        line = next(
            (ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")),
            None,
        )
        if line is None:
            raise RuntimeError(f"wrk gave no summary (rc {out.returncode}): {out.stderr[-1500:]}")
        data = json.loads(line.removeprefix("BENCH_JSON "))
        errors = {k: int(v) for k, v in data["errors"].items()}
        requests = int(data["requests"])
        # wrk counts a non-2xx/3xx answer both as a request and as a "status" error.
        failed = errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
        failed += errors["status"]
        duration = data["duration_us"] / 1e6
        lat = data["latency_us"]
        have = requests > 0
        records: list[Record] | None = None
        if record is not None:
            records = []
            for line in record.read_text().splitlines():
                start_us, lat_us, status, version = line.split("\t")
                records.append((float(start_us) / 1e6, float(lat_us) / 1000, int(status), version))
            records.sort()
            seen: dict[str, int] = {}
            for *_, v in records:
                seen[v] = seen.get(v, 0) + 1
            data["versions"] = seen
        return LoadResult(
            tool="wrk",
            connections=connections,
            seconds=duration,
            requests=requests,
            ok=max(requests - errors["status"], 0),
            errors=failed,
            error_kinds=errors,
            rps=requests / duration if duration else 0.0,
            p50_ms=lat["p50"] / 1000 if have else None,
            p90_ms=lat["p90"] / 1000 if have else None,
            p99_ms=lat["p99"] / 1000 if have else None,
            max_ms=lat["max"] / 1000 if have else None,
            mean_ms=lat["mean"] / 1000 if have else None,
            versions={str(k): int(v) for k, v in data.get("versions", {}).items()},
            started=started,
            ended=ended,
            records=records,
        )

    # -- fallback ----------------------------------------------------------------------------

    def _python(
        self,
        url: str,
        body: bytes,
        connections: int,
        seconds: float,
        versions: bool,
        record: bool,
    ) -> LoadResult:
        started = time.monotonic()
        latencies, statuses, kinds, seen, records = asyncio.run(
            _python_load(url, body, connections, seconds, self.timeout_s, versions or record)
        )
        ended = time.monotonic()
        duration = ended - started
        lat = np.asarray(latencies) * 1000
        bad_status = sum(n for s, n in statuses.items() if not 200 <= s < 400)
        requests = len(latencies)
        have = requests > 0
        kinds["status"] = bad_status
        return LoadResult(
            tool="python-asyncio-httpx",
            connections=connections,
            seconds=duration,
            requests=requests,
            ok=requests - bad_status,
            errors=bad_status + sum(v for k, v in kinds.items() if k != "status"),
            error_kinds=kinds,
            rps=requests / duration if duration else 0.0,
            p50_ms=float(np.percentile(lat, 50)) if have else None,
            p90_ms=float(np.percentile(lat, 90)) if have else None,
            p99_ms=float(np.percentile(lat, 99)) if have else None,
            max_ms=float(lat.max()) if have else None,
            mean_ms=float(lat.mean()) if have else None,
            versions=seen,
            started=started,
            ended=ended,
            records=sorted(records) if record else None,
        )


async def _python_load(
    url: str, body: bytes, connections: int, seconds: float, timeout: float, versions: bool
) -> tuple[list[float], dict[int, int], dict[str, int], dict[str, int], list[Record]]:
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    kinds: dict[str, int] = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    seen: dict[str, int] = {}
    records: list[Record] = []
    deadline = time.monotonic() + seconds
    cap = 200_000  # bounded in count as well as time
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def worker() -> None:
            while time.monotonic() < deadline and len(latencies) < cap:
                t0 = time.perf_counter()
                m0 = time.monotonic()
                try:
                    r = await client.post(url, content=body, headers=headers)
                except httpx.TimeoutException:
                    kinds["timeout"] += 1
                    continue
                except httpx.ConnectError:
                    kinds["connect"] += 1
                    await asyncio.sleep(0.01)
                    continue
                except httpx.HTTPError:
                    kinds["read"] += 1
                    continue
                latency = time.perf_counter() - t0
                latencies.append(latency)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                v = None
                if versions:
                    try:
                        v = r.json().get("model_version")
                    except ValueError:
                        v = None
                    if v is not None:
                        seen[str(v)] = seen.get(str(v), 0) + 1
                records.append((m0, latency * 1000, r.status_code, "-" if v is None else str(v)))

        await asyncio.gather(*(worker() for _ in range(connections)))
    return latencies, statuses, kinds, seen, records
