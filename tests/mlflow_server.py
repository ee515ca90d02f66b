"""A real `mlflow server` for the tests: PostgreSQL backend store, artifacts proxied by it.

The server runs as a subprocess in its own process group (the CLI starts uvicorn, which
starts its worker), so ending the group ends all of them. Its output goes to a log file whose
tail is in the message when it does not come up.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tests.polling import eventually

MLFLOW = Path(sys.executable).with_name("mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def psycopg_uri(url: str) -> str:
    """`postgresql://…` with the psycopg 3 driver named (SQLAlchemy's default is psycopg2)."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if sep and scheme == "postgresql" else url


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End the server's process group: TERM, then KILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # The leader may be gone while a worker lingers in the group.
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def mlflow_server(
    backend_uri: str,
    artifacts: Path,
    *,
    log_file: Path | None = None,
    within: float = 90.0,
) -> Iterator[str]:
    """Run `mlflow server` on `backend_uri`, serving artifacts from `artifacts`; yield its URL.

    `backend_uri` may be a plain `postgresql://` URL: it is given the psycopg 3 driver.
    The log goes to `log_file` (default: `mlflow-server.log` beside `artifacts`).
    """
    artifacts.mkdir(parents=True, exist_ok=True)
    log_path = log_file or artifacts.parent / "mlflow-server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(MLFLOW),
        "server",
        "--backend-store-uri",
        psycopg_uri(backend_uri),
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts.resolve()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=artifacts.parent,  # anything it writes by default stays out of the repo
            env=env,
            start_new_session=True,
        )
    try:
        eventually(lambda: proc.poll() is not None or healthy(url), within=within, step=0.2)
        if not healthy(url):
            state = f"exited with {proc.returncode}" if proc.poll() is not None else "no answer"
            raise RuntimeError(
                f"mlflow server on {url} did not come up within {within:.0f}s ({state}); "
                f"log {log_path}:\n{tail(log_path)}"
            )
        yield url
    finally:
        _stop(proc)
