"""Start a server in its own process group on a loopback port, time it to ready, always stop it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin_prefix(cpu: int | None) -> list[str]:
    """`taskset -c CPU` when pinning is possible, else nothing."""
    if cpu is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(cpu)]


def bentoml_config_file(path: Path, service: str, config: dict[str, Any]) -> Path:
    """A `BENTOML_CONFIG` file overriding one service's decorator configuration.

    No `version` key: BentoML 1.4 first loads the file at import time with its v1 schema,
    which refuses `version: 2` (and accepts a `services` section); the service factory then
    reads the same file as v2. JSON is YAML, so no YAML writer is needed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"services": {service: config}}, indent=1), encoding="utf-8")
    return path


@dataclass
class Server:
    name: str
    base: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    ready_seconds: float | None = None
    ready_body: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def processes(self) -> list[dict[str, Any]]:
        """The process tree (supervisor and workers) with resident and unique memory."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        out = []
        for p in procs:
            try:
                with p.oneshot():
                    # Program names only: absolute paths would tie the report to one machine.
                    cmd = " ".join(
                        os.path.basename(a) if a.startswith("/") else a for a in p.cmdline()
                    )
                    mem = p.memory_full_info()
                    out.append(
                        {
                            "pid": p.pid,
                            "ppid": p.ppid(),
                            "rss_mb": round(mem.rss / 2**20, 1),
                            "uss_mb": round(mem.uss / 2**20, 1),
                            "cmd": cmd[:160],
                        }
                    )
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out


# pid -> (create time, CPU seconds so far): a pid reused by another process is not confused.
CpuSample = dict[int, tuple[float, float]]


def worker_cpu(server: Server) -> CpuSample:
    """User + system CPU seconds so far of each worker: every descendant of the server's own
    process (BentoML's worker processes, uvicorn under `mlflow models serve`), not the
    supervisor itself."""
    import psutil

    try:
        procs = psutil.Process(server.proc.pid).children(recursive=True)
    except psutil.Error:
        return {}
    out: CpuSample = {}
    for p in procs:
        try:
            with p.oneshot():
                t = p.cpu_times()
                out[p.pid] = (p.create_time(), t.user + t.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def cpu_used(before: CpuSample, after: CpuSample) -> float:
    """CPU seconds the workers consumed between two samples (a worker started in between
    counts from zero; one that ended in between is lost)."""
    total = 0.0
    for pid, (created, seconds) in after.items():
        prev = before.get(pid)
        total += seconds - prev[1] if prev is not None and prev[0] == created else seconds
    return total


def vmrss_mb(pid: int) -> float | None:
    """VmRSS of one process from /proc/<pid>/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def worker_memory(server: Server, worker_pid: int | None = None) -> dict[str, Any]:
    """RSS of the serving worker (by pid when known, else the largest leaf) and of the tree."""
    procs = server.processes()
    if not procs:
        return {"processes": []}
    if worker_pid is None:
        parents = {p["ppid"] for p in procs}
        leaves = [p for p in procs if p["pid"] not in parents] or procs
        worker_pid = max(leaves, key=lambda p: p["rss_mb"])["pid"]
    worker = next((p for p in procs if p["pid"] == worker_pid), None)
    return {
        "worker_pid": worker_pid,
        "worker_rss_mb": vmrss_mb(worker_pid) if worker else None,
        "worker_uss_mb": worker["uss_mb"] if worker else None,
        "tree_rss_mb": round(sum(p["rss_mb"] for p in procs), 1),
        "tree_uss_mb": round(sum(p["uss_mb"] for p in procs), 1),
        "processes": procs,
    }


def _ready(base: str, path: str, check: Callable[[httpx.Response], bool] | None) -> Any:
    try:
        r = httpx.get(f"{base}{path}", timeout=2)
    except httpx.HTTPError:
        return None
    if r.status_code != 200 or (check is not None and not check(r)):
        return None
    try:
        return r.json()
    except ValueError:
        return {"status": r.status_code, "text": r.text[:200]}


@contextmanager
def serving(
    name: str,
    argv: list[str],
    *,
    port: int,
    cwd: Path,
    env: dict[str, str],
    log_dir: Path,
    ready_path: str,
    cpu: int | None = None,
    ready_timeout: float = 180.0,
    check: Callable[[httpx.Response], bool] | None = None,
) -> Iterator[Server]:
    """Run `argv` (pinned to `cpu`) in a new session; yield once `ready_path` answers 200.

    `ready_seconds` is process start to the first 200 from `ready_path`. On exit the whole
    process group gets SIGTERM, then SIGKILL after 20 s.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    log = log_path.open("wb")
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    proc = subprocess.Popen(
        [*pin_prefix(cpu), *argv],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = Server(name=name, base=base, proc=proc, log_path=log_path)
    try:
        deadline = started + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode} before ready:\n{server.log_tail()}"
                )
            body = _ready(base, ready_path, check)
            if body is not None:
                server.ready_seconds = time.monotonic() - started
                server.ready_body = body
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{name} not ready after {ready_timeout:.0f}s:\n{server.log_tail()}"
                )
            time.sleep(0.05)
        yield server
    finally:
        stop(proc)
        log.close()


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the process group, then SIGKILL; never leaves it or its descendants running.

    BentoML starts its workers in process groups of their own, so every descendant found
    before the signal is also checked (by pid and start time) and ended if it outlived it.
    """
    import psutil

    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    # Members of the group that outlived the leader.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    alive = [p for p in descendants if p.is_running()]
    for p in alive:
        with suppress(psutil.Error):
            p.terminate()
    _, still = psutil.wait_procs(alive, timeout=10)
    for p in still:
        with suppress(psutil.Error):
            p.kill()
