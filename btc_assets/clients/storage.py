"""A small storage client for the contract's layout: HDFS through WebHDFS, or a local directory.

WebHDFS (the NameNode's REST API) needs no JVM and no native libhdfs in the Python process, so the
Dagster code location stays light. ``Storage.for_url`` picks the implementation from the root URL:
``hdfs://namenode:8020/btc`` (with the WebHDFS endpoint) or ``file:///some/dir/btc``.

Writes are atomic by convention: callers write to a temporary path and ``rename`` it into place,
so a failed or killed job never leaves half a file at a contract path.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator
from urllib.parse import urlparse

import requests

CHUNK = 4 * 1024 * 1024


class StorageError(RuntimeError):
    """A storage operation failed; the message names the path and the server's reason."""


@dataclass(frozen=True)
class FileStatus:
    path: str
    is_dir: bool
    length: int
    modification_ms: int


class WebHDFS:
    """HDFS over WebHDFS. Paths are absolute HDFS paths (``/btc/raw/...``)."""

    def __init__(self, webhdfs_url: str, user: str | None = None, timeout: float = 60.0):
        self.base = webhdfs_url.rstrip("/") + "/webhdfs/v1"
        self.user = user or getpass.getuser()
        self.timeout = timeout
        self.session = requests.Session()

    def _url(self, path: str) -> str:
        if not path.startswith("/"):
            raise StorageError(f"HDFS paths must be absolute, got {path!r}")
        return self.base + path

    def _call(self, method: str, path: str, op: str, *, ok=(200,), allow_redirects=True, stream=False, **params):
        params = {"op": op, "user.name": self.user, **params}
        try:
            response = self.session.request(method, self._url(path), params=params, timeout=self.timeout,
                                            allow_redirects=allow_redirects, stream=stream)
        except requests.RequestException as exc:
            raise StorageError(f"HDFS {op} {path}: NameNode at {self.base} unreachable ({exc})") from exc
        if response.status_code not in ok:
            raise StorageError(f"HDFS {op} {path}: HTTP {response.status_code} {_remote_message(response)}")
        return response

    def status(self, path: str) -> FileStatus | None:
        try:
            response = self.session.get(self._url(path), params={"op": "GETFILESTATUS", "user.name": self.user},
                                        timeout=self.timeout)
        except requests.RequestException as exc:
            raise StorageError(f"HDFS GETFILESTATUS {path}: NameNode unreachable ({exc})") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise StorageError(f"HDFS GETFILESTATUS {path}: HTTP {response.status_code} {_remote_message(response)}")
        return _status(path, response.json()["FileStatus"])

    def exists(self, path: str) -> bool:
        return self.status(path) is not None

    def list(self, path: str) -> list[FileStatus]:
        body = self._call("GET", path, "LISTSTATUS").json()
        return [_status(f"{path.rstrip('/')}/{item['pathSuffix']}", item)
                for item in body["FileStatuses"]["FileStatus"]]

    def mkdirs(self, path: str) -> None:
        self._call("PUT", path, "MKDIRS")

    def write(self, path: str, data: bytes | BinaryIO | Iterable[bytes], *, overwrite: bool = True) -> int:
        """Create ``path`` from bytes, a file object or an iterable of chunks; return the bytes written."""
        # Two steps, as WebHDFS wants: the NameNode answers with the DataNode URL to send the data to.
        first = self._call("PUT", path, "CREATE", ok=(307,), allow_redirects=False,
                           overwrite=str(overwrite).lower())
        location = first.headers["Location"]
        counter = _CountingBody(data)
        try:
            response = self.session.put(location, data=counter, timeout=self.timeout,
                                        headers={"Content-Type": "application/octet-stream"})
        except requests.RequestException as exc:
            raise StorageError(f"HDFS CREATE {path}: DataNode unreachable ({exc})") from exc
        if response.status_code != 201:
            raise StorageError(f"HDFS CREATE {path}: HTTP {response.status_code} {_remote_message(response)}")
        return counter.count

    def read(self, path: str) -> bytes:
        """The whole file: for small files (metrics, checkpoint offsets); large ones go through ``open``."""
        with self.open(path) as stream:
            return stream.read()

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[BinaryIO]:
        """A binary stream of the file, read from the DataNode as it is consumed (never all in memory)."""
        response = self._call("GET", path, "OPEN", stream=True)
        response.raw.decode_content = True
        try:
            yield response.raw
        finally:
            response.close()

    def rename(self, source: str, destination: str) -> None:
        body = self._call("PUT", source, "RENAME", destination=destination).json()
        if not body.get("boolean"):
            raise StorageError(f"HDFS RENAME {source} -> {destination} refused (does the parent exist, "
                               "or the destination already?)")

    def delete(self, path: str, *, recursive: bool = False) -> bool:
        return bool(self._call("DELETE", path, "DELETE", recursive=str(recursive).lower()).json().get("boolean"))


class LocalFS:
    """The same interface on a local directory (``file://`` roots): for users without HDFS."""

    def _p(self, path: str) -> Path:
        return Path(path)

    def status(self, path: str) -> FileStatus | None:
        p = self._p(path)
        if not p.exists():
            return None
        st = p.stat()
        return FileStatus(path, p.is_dir(), 0 if p.is_dir() else st.st_size, int(st.st_mtime * 1000))

    def exists(self, path: str) -> bool:
        return self._p(path).exists()

    def list(self, path: str) -> list[FileStatus]:
        return [self.status(str(child)) for child in sorted(self._p(path).iterdir())]

    def mkdirs(self, path: str) -> None:
        self._p(path).mkdir(parents=True, exist_ok=True)

    def write(self, path: str, data, *, overwrite: bool = True) -> int:
        p = self._p(path)
        if p.exists() and not overwrite:
            raise StorageError(f"{path} exists")
        p.parent.mkdir(parents=True, exist_ok=True)
        counter = _CountingBody(data)
        with open(p, "wb") as out:
            for chunk in counter:
                out.write(chunk)
        return counter.count

    def read(self, path: str) -> bytes:
        return self._p(path).read_bytes()

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[BinaryIO]:
        with open(self._p(path), "rb") as handle:
            yield handle

    def rename(self, source: str, destination: str) -> None:
        if self._p(destination).exists():
            raise StorageError(f"rename {source} -> {destination}: destination exists")
        self._p(source).rename(destination)

    def delete(self, path: str, *, recursive: bool = False) -> bool:
        p = self._p(path)
        if not p.exists():
            return False
        if p.is_dir():
            if recursive:
                shutil.rmtree(p)
            else:
                p.rmdir()
        else:
            p.unlink()
        return True


class Storage:
    """The storage root of the contract's layout plus a filesystem client to reach it.

    ``url(path)`` gives the URL Spark and MapReduce use (``hdfs://…/btc/raw/…``), ``fs`` the client
    Python code uses with the plain path (``/btc/raw/…``).
    """

    def __init__(self, root_url: str, fs: WebHDFS | LocalFS, root_path: str):
        self.root_url = root_url.rstrip("/")
        self.fs = fs
        self.root = root_path.rstrip("/") or "/"

    @classmethod
    def for_url(cls, filesystem_url: str, root: str, *, webhdfs_url: str | None = None,
                user: str | None = None) -> "Storage":
        parsed = urlparse(filesystem_url)
        if parsed.scheme == "hdfs":
            if not webhdfs_url:
                raise StorageError("an hdfs:// root needs the NameNode's WebHDFS URL (BTC_WEBHDFS_URL)")
            return cls(f"{filesystem_url.rstrip('/')}{root}", WebHDFS(webhdfs_url, user), root)
        if parsed.scheme == "file":
            base = parsed.path.rstrip("/")
            return cls(f"file://{base}{root}", LocalFS(), f"{base}{root}")
        raise StorageError(f"unsupported filesystem URL {filesystem_url!r}: use hdfs://host:port or file:///dir")

    def path(self, relative: str) -> str:
        return f"{self.root.rstrip('/')}/{relative.lstrip('/')}"

    def url(self, path: str) -> str:
        """The engine URL of a path returned by ``path()``."""
        if not path.startswith(self.root):
            raise StorageError(f"{path} is outside the storage root {self.root}")
        return self.root_url + path[len(self.root):]

    def replace(self, path: str, data) -> int:
        """Write ``path`` atomically: a temporary sibling first, then delete-and-rename into place."""
        tmp = f"{path}._tmp"
        parent = path.rsplit("/", 1)[0]
        self.fs.mkdirs(parent)
        try:
            written = self.fs.write(tmp, data, overwrite=True)
            self.fs.delete(path, recursive=True)
            self.fs.rename(tmp, path)
        except BaseException:
            _quietly(lambda: self.fs.delete(tmp, recursive=True))
            raise
        return written


class _CountingBody:
    """An iterable of byte chunks over bytes, a file object or chunks, counting what passes."""

    def __init__(self, data):
        self.data = data
        self.count = 0

    def __iter__(self):
        if isinstance(self.data, (bytes, bytearray, memoryview)):
            chunks: Iterable[bytes] = [bytes(self.data)]
        elif hasattr(self.data, "read"):
            chunks = iter(lambda: self.data.read(CHUNK), b"")
        else:
            chunks = self.data
        for chunk in chunks:
            self.count += len(chunk)
            yield chunk


def _status(path: str, item: dict) -> FileStatus:
    return FileStatus(path, item["type"] == "DIRECTORY", int(item.get("length", 0)),
                      int(item.get("modificationTime", 0)))


def _remote_message(response: requests.Response) -> str:
    try:
        return response.json()["RemoteException"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


def _quietly(action) -> None:
    try:
        action()
    except Exception:  # noqa: BLE001 - cleanup after a failure must not hide the failure
        pass
