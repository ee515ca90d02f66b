"""Where batches live: a local folder, or a prefix in an object store through fsspec (S3).

`location(where)` gives a `Folder` for a plain path or a `file://` URI (a `LocalFolder`,
with the local guarantees: temp file + fsync + `os.replace` for writes, `fstat` before and
after a read) or for `s3://bucket/prefix` (an `ObjectFolder` over fsspec/s3fs). A folder holds
files directly (no sub-folders); names are plain file names.

What replaces the local guarantees on S3:

* a write is one PUT (a multipart upload above 100 MB): readers see the old object or the
  new one, never a part, and it is durable once the call returns;
* a whole read is one GET: its body and its ETag, size and Last-Modified describe the same
  object version (the size is checked against the bytes received);
* "remove unless it changed" compares ETag, size and Last-Modified by a HEAD, then deletes
  with `If-Match: <ETag>`, so an object overwritten in between is kept (servers that do not
  implement conditional deletes get the HEAD check alone, the local stat check's equal);
* modification times are the objects' Last-Modified (whole seconds, the server's clock).

S3 settings come from the environment, read by botocore (s3fs is given no options of its
own): `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (a non-AWS server: MinIO, moto, ...),
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` (or `AWS_PROFILE` with
`AWS_CONFIG_FILE` / `AWS_SHARED_CREDENTIALS_FILE`, or an instance/task role),
`AWS_DEFAULT_REGION` (botocore does not read `AWS_REGION` for it), `AWS_CA_BUNDLE`,
`AWS_MAX_ATTEMPTS` / `AWS_RETRY_MODE`. fsspec's own `FSSPEC_S3_<OPTION>` variables (e.g.
`FSSPEC_S3_ENDPOINT_URL`) reach `S3FileSystem` too.

This module imports fsspec only when a URI is opened: the embedded (local) mode never does.
"""

from __future__ import annotations

import contextlib
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from stat import S_ISREG
from typing import Any
from urllib.parse import unquote, urlsplit

from champion.training.files import (
    atomic_write_bytes,
    atomic_write_text,
    sha256_bytes,
    sha256_file,
)

# Where the contract may keep the landing zone, quarantine and batch store.
CONFIG_SCHEMES = ("file", "s3")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def parse_location(value: Any) -> Path | str:
    """A configured folder: a `Path` for a plain path or `file://` URI, else an `s3://` URI.

    Raises ValueError (a config error) for any other scheme or a malformed URI.
    """
    if isinstance(value, Path):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a path or URI, got {type(value).__name__}")
    if "://" not in value:
        return Path(value)
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme not in CONFIG_SCHEMES:
        raise ValueError(
            f"unsupported scheme {parts.scheme + '://'!r} in {value!r}; use a local path, "
            "file:///absolute/path or s3://bucket/prefix"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r}: a folder URI takes no '?query' or '#fragment'")
    if scheme == "file":
        from urllib.request import url2pathname  # not at the top: it imports http.client

        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{value!r}: file:// URIs name a local path (file:///path)")
        path = Path(url2pathname(parts.path))
        if not parts.path or not path.is_absolute():
            raise ValueError(f"{value!r}: a file:// URI needs an absolute path (file:///path)")
        return path
    bucket, prefix = parts.netloc, unquote(parts.path).strip("/")
    if not _BUCKET.match(bucket):
        raise ValueError(f"{value!r}: {bucket!r} is not a valid S3 bucket name")
    if prefix and any(seg in ("", ".", "..") for seg in prefix.split("/")):
        raise ValueError(f"{value!r}: the prefix has an empty, '.' or '..' segment")
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


@dataclass(frozen=True)
class Entry:
    """A file in a folder as seen once: name, size, modification time (epoch seconds).

    `version` tells one content of the file from another: (device, inode, size, mtime_ns)
    locally, (ETag, size, Last-Modified) in an object store.
    """

    name: str
    size: int
    mtime: float
    version: tuple[Any, ...]


class Folder(ABC):
    """A flat folder of files, local or remote."""

    @property
    @abstractmethod
    def url(self) -> str:
        """The folder as configured: a path, or a URI."""

    def __str__(self) -> str:
        return self.url

    @abstractmethod
    def join(self, name: str) -> str:
        """The address of a file in the folder, for messages."""

    @abstractmethod
    def list(self) -> list[Entry]:
        """The regular files directly in the folder, by name; none when it does not exist.

        Hidden names (a leading ".", as the temp files of writes in progress) are left out.
        """

    @abstractmethod
    def stat(self, name: str) -> Entry:
        """The file as it is now; FileNotFoundError when there is none."""

    def exists(self, name: str) -> bool:
        try:
            self.stat(name)
        except FileNotFoundError:
            return False
        return True

    @abstractmethod
    def read_bytes(self, name: str) -> bytes:
        """The file's bytes; FileNotFoundError when there is none."""

    @abstractmethod
    def read_whole(self, name: str) -> tuple[bytes, Entry] | None:
        """The bytes and the version they are of, or None when it changed while being read.

        FileNotFoundError when there is none.
        """

    def sha256(self, name: str) -> str:
        return sha256_bytes(self.read_bytes(name))

    @abstractmethod
    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a file so readers see the old or the new one, never a part; durably."""

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    @abstractmethod
    def remove(self, name: str) -> None:
        """Remove the file; nothing happens when there is none."""

    @abstractmethod
    def remove_unchanged(self, name: str, seen: Entry) -> bool:
        """Remove the file unless it changed since `seen`: False when it is kept."""


class LocalFolder(Folder):
    """A folder on a local (or mounted) file system: the embedded default."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def url(self) -> str:
        return str(self.path)

    def join(self, name: str) -> str:
        return str(self.path / name)

    @staticmethod
    def _entry(name: str, info: os.stat_result) -> Entry:
        return Entry(
            name,
            info.st_size,
            info.st_mtime,
            (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns),
        )

    def list(self) -> list[Entry]:
        if not self.path.exists():
            return []
        entries: list[Entry] = []
        for path in sorted(self.path.iterdir()):
            if path.name.startswith("."):
                continue
            try:
                info = path.stat()
            except FileNotFoundError:  # removed since the listing
                continue
            if S_ISREG(info.st_mode):
                entries.append(self._entry(path.name, info))
        return entries

    def stat(self, name: str) -> Entry:
        return self._entry(name, (self.path / name).stat())

    def exists(self, name: str) -> bool:
        return (self.path / name).exists()

    def read_bytes(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def read_whole(self, name: str) -> tuple[bytes, Entry] | None:
        with (self.path / name).open("rb") as fh:
            before = os.fstat(fh.fileno())
            data = fh.read()
            after = os.fstat(fh.fileno())
        seen = self._entry(name, after)
        if self._entry(name, before) != seen or len(data) != after.st_size:
            return None
        return data, seen

    def sha256(self, name: str) -> str:
        return sha256_file(self.path / name)

    def write_bytes(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self.path / name, data)

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.path / name, text)

    def remove(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)

    def remove_unchanged(self, name: str, seen: Entry) -> bool:
        path = self.path / name
        try:
            if self.stat(name).version != seen.version:
                return False
            path.unlink()
        except FileNotFoundError:
            pass
        return True


def _timestamp(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return 0.0


def _client_error(exc: BaseException) -> tuple[str, int]:
    """The S3 error code and HTTP status behind an exception s3fs translated, if any."""
    cause = exc.__cause__
    response = getattr(cause, "response", None)
    if not isinstance(response, dict):
        return "", 0
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


class ObjectFolder(Folder):
    """A prefix in an object store through fsspec: S3 (s3fs), or `memory://` in tests.

    The listings cache is off: every call asks the store.
    """

    def __init__(self, uri: str) -> None:
        import fsspec.core

        self._uri = uri.rstrip("/")
        self.fs, root = fsspec.core.url_to_fs(self._uri, use_listings_cache=False)
        self.root = root.rstrip("/")
        self.s3 = hasattr(self.fs, "call_s3")

    @property
    def url(self) -> str:
        return self._uri

    def join(self, name: str) -> str:
        return f"{self._uri}/{name}"

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _entry(self, name: str, info: dict[str, Any]) -> Entry:
        size = int(info.get("size", info.get("ContentLength", 0)) or 0)
        mtime = _timestamp(
            info.get("LastModified") or info.get("mtime") or info.get("created") or 0
        )
        return Entry(name, size, mtime, (info.get("ETag"), size, mtime))

    def list(self) -> list[Entry]:
        try:
            listed = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            if self.s3:  # an empty prefix, or no bucket at all: only the first is fine
                bucket = self.fs.split_path(self.root)[0]
                try:
                    self.fs.call_s3("head_bucket", Bucket=bucket)
                except FileNotFoundError:
                    raise FileNotFoundError(
                        f"{self._uri}: bucket {bucket!r} does not exist"
                    ) from None
            return []
        entries = []
        inside = self.root + "/"
        for info in listed:
            # Files directly under the prefix; not sub-prefixes, nor an object named as the
            # prefix itself (s3fs lists that one when nothing is under it).
            path = str(info["name"])
            name = path.removeprefix(inside)
            if (
                info.get("type") == "file"
                and path.startswith(inside)
                and name
                and "/" not in name
                and not name.startswith(".")
            ):
                entries.append(self._entry(name, info))
        return sorted(entries, key=lambda e: e.name)

    def _head(self, name: str) -> Entry:
        if self.s3:
            bucket, key, _ = self.fs.split_path(self._path(name))
            return self._entry(name, self.fs.call_s3("head_object", Bucket=bucket, Key=key))
        info = self.fs.info(self._path(name))
        if info.get("type") != "file":
            raise FileNotFoundError(self.join(name))
        return self._entry(name, info)

    def stat(self, name: str) -> Entry:
        return self._head(name)

    def _get(self, name: str) -> tuple[bytes, Entry]:
        """One GET: the body and the version it is of (S3)."""
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(self._path(name))

        async def get() -> tuple[bytes, dict[str, Any]]:
            response = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            try:
                return await response["Body"].read(), response
            finally:
                response["Body"].close()

        data, response = sync(self.fs.loop, get)
        return data, self._entry(name, response)

    def read_bytes(self, name: str) -> bytes:
        if self.s3:
            return self._get(name)[0]
        return bytes(self.fs.cat_file(self._path(name)))

    def read_whole(self, name: str) -> tuple[bytes, Entry] | None:
        if self.s3:
            data, seen = self._get(name)
        else:  # no single call gives bytes and version together: look before and after
            before = self._head(name)
            data = bytes(self.fs.cat_file(self._path(name)))
            seen = self._head(name)
            if seen != before:
                return None
        if len(data) != seen.size:
            return None
        return data, seen

    def write_bytes(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(name), data)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(name))

    def remove_unchanged(self, name: str, seen: Entry) -> bool:
        try:
            if self._head(name).version != seen.version:
                return False
        except FileNotFoundError:
            return True
        etag = seen.version[0]
        if not self.s3 or not etag:  # no ETag to match: the HEAD check stands alone
            self.remove(name)
            return True
        bucket, key, _ = self.fs.split_path(self._path(name))
        try:
            self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
        except FileNotFoundError:
            pass
        except OSError as exc:
            code, status = _client_error(exc)
            if code == "PreconditionFailed" or status == 412:
                return False  # overwritten between the HEAD and the DELETE
            if code != "NotImplemented" and status != 501:
                raise
            self.remove(name)  # no conditional deletes here: the HEAD check stands alone
        return True


def location(where: Path | str) -> Folder:
    """The folder at a path or URI (as `parse_location` gives them, or any fsspec URI)."""
    if isinstance(where, str) and "://" in where:
        configurable = where.lower().startswith(tuple(f"{s}://" for s in CONFIG_SCHEMES))
        parsed = parse_location(where) if configurable else where
        if isinstance(parsed, str):
            return ObjectFolder(parsed)
        where = parsed
    return LocalFolder(Path(where))


def local_path(where: Path | str, purpose: str) -> Path:
    """The local folder `where` names; a ConfigError for a URI, naming what needs it local."""
    if isinstance(where, Path):
        return where
    from champion.training.errors import ConfigError

    raise ConfigError(f"{purpose} writes into a local folder; the landing zone is {where}")
