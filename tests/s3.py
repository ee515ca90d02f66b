"""A real S3-compatible server for the tests: moto's server mode, a subprocess on 127.0.0.1.

`moto_s3()` starts `moto_server` on a free port, points botocore (so s3fs) at it through the
standard environment variables (fake credentials, a region, no user AWS config), creates a
bucket, yields an `S3Server`, and stops the server and restores the environment afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MOTO_SERVER = Path(sys.executable).with_name("moto_server")

# What the server and the client see while a test runs; None removes the variable.
_FIXED_ENV: dict[str, str | None] = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_SESSION_TOKEN": None,
    "AWS_SECURITY_TOKEN": None,
    "AWS_PROFILE": None,
    "AWS_DEFAULT_PROFILE": None,
    "AWS_ENDPOINT_URL_S3": None,
    "FSSPEC_S3": None,
    "FSSPEC_S3_ENDPOINT_URL": None,
}


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    _client: Any = field(default=None, repr=False)

    def uri(self, *parts: str) -> str:
        """`s3://<bucket>/<parts...>`."""
        return "/".join([f"s3://{self.bucket}", *parts])

    @property
    def client(self) -> Any:
        """A plain botocore S3 client on the server, independent of the code under test."""
        if self._client is None:
            import botocore.session

            self._client = botocore.session.get_session().create_client(
                "s3", endpoint_url=self.endpoint
            )
        return self._client

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def keys(self, prefix: str = "") -> list[str]:
        """Every key under `prefix` (recursive), sorted."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(proc: subprocess.Popen[bytes], endpoint: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return True
        except urllib.error.HTTPError:
            return True  # it answers
        except OSError:
            time.sleep(0.05)
    return False


def _clear_s3fs_instances() -> None:
    """Forget cached S3FileSystem instances: they keep the endpoint they were made with."""
    try:
        import s3fs
    except ImportError:  # pragma: no cover - s3fs is a project dependency
        return
    s3fs.S3FileSystem.clear_instance_cache()


@contextmanager
def moto_s3(bucket: str = "champion", *, timeout: float = 30.0) -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 with `bucket` created; the environment points at it."""
    saved = {k: os.environ.get(k) for k in [*_FIXED_ENV, "AWS_ENDPOINT_URL"]}
    saved |= {k: os.environ.get(k) for k in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")}
    with tempfile.TemporaryDirectory(prefix="moto-") as scratch:
        log_path = Path(scratch) / "moto.log"
        proc: subprocess.Popen[bytes] | None = None
        endpoint = ""
        try:
            for _ in range(3):  # the free port may be taken before the server binds it
                port = _free_port()
                endpoint = f"http://127.0.0.1:{port}"
                with log_path.open("wb") as log:
                    proc = subprocess.Popen(
                        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                if _wait_until_up(proc, endpoint, timeout):
                    break
                proc.kill()
                proc.wait()
                proc = None
            if proc is None:
                raise RuntimeError(
                    f"moto_server did not start: {log_path.read_text(errors='replace')[-2000:]}"
                )
            for key, value in _FIXED_ENV.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            os.environ["AWS_ENDPOINT_URL"] = endpoint
            # No user or machine AWS configuration leaks in.
            os.environ["AWS_CONFIG_FILE"] = str(Path(scratch) / "no-config")
            os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(Path(scratch) / "no-credentials")
            _clear_s3fs_instances()
            server = S3Server(endpoint, bucket)
            server.client.create_bucket(Bucket=bucket)
            yield server
        finally:
            _clear_s3fs_instances()
            for key, old in saved.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
