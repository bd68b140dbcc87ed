"""Object storage behind one interface: `s3://bucket/prefix` (any S3 API) or a local folder.

Every service reads and writes objects through `open_store(uri)`. S3 goes through aiobotocore
and honours the standard endpoint variables (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`), so a local
S3 API server is a matter of configuration. A local folder (`file:///abs/path` or a plain path)
gets the same semantics: a put is atomic (temp file + rename) and durable (fsync) before it returns.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float


class ObjectStore(ABC):
    uri: str

    @abstractmethod
    async def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    @abstractmethod
    async def head(self, key: str) -> ObjectInfo | None: ...

    @abstractmethod
    async def get(self, key: str) -> bytes: ...

    @abstractmethod
    async def list(self, prefix: str = "") -> list[ObjectInfo]: ...

    async def check(self) -> None:
        """Raise when the store cannot be reached (used by health checks)."""
        await self.list("__healthcheck__/")

    async def close(self) -> None:
        return None


class LocalStore(ObjectStore):
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise ValueError(f"key {key!r} escapes the store root")
        return path

    def _put_sync(self, key: str, data: bytes) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        await asyncio.to_thread(self._put_sync, key, data)

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            stat = self._path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, stat.st_size, stat.st_mtime)

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self._path(key).read_bytes)

    def _list_sync(self, prefix: str) -> list[ObjectInfo]:
        found = []
        if not self.root.exists():
            return found
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                full = Path(dirpath, name)
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    stat = full.stat()
                    found.append(ObjectInfo(key, stat.st_size, stat.st_mtime))
        return sorted(found, key=lambda info: info.key)

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        return await asyncio.to_thread(self._list_sync, prefix)

    async def check(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise PermissionError(f"{self.root} is not writable")


class S3Store(ObjectStore):
    def __init__(self, bucket: str, prefix: str = "", region: str | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.uri = f"s3://{bucket}/{self.prefix}"
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self._client = None
        self._exit_stack = None
        self._lock = asyncio.Lock()

    async def _s3(self):
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    from contextlib import AsyncExitStack

                    from aiobotocore.config import AioConfig
                    from aiobotocore.session import get_session

                    stack = AsyncExitStack()
                    config = AioConfig(
                        retries={"max_attempts": 5, "mode": "standard"},
                        connect_timeout=5,
                        read_timeout=30,
                        max_pool_connections=16,
                    )
                    self._client = await stack.enter_async_context(
                        get_session().create_client("s3", region_name=self.region, config=config)
                    )
                    self._exit_stack = stack
        return self._client

    async def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        s3 = await self._s3()
        await s3.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data, ContentType=content_type)

    async def head(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        s3 = await self._s3()
        try:
            answer = await s3.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return ObjectInfo(key, answer["ContentLength"], answer["LastModified"].timestamp())

    async def get(self, key: str) -> bytes:
        s3 = await self._s3()
        answer = await s3.get_object(Bucket=self.bucket, Key=self.prefix + key)
        async with answer["Body"] as body:
            return await body.read()

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        s3 = await self._s3()
        found = []
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for item in page.get("Contents", []):
                found.append(
                    ObjectInfo(item["Key"][len(self.prefix) :], item["Size"], item["LastModified"].timestamp())
                )
        return found

    async def check(self) -> None:
        s3 = await self._s3()
        await s3.head_bucket(Bucket=self.bucket)

    async def close(self) -> None:
        if self._exit_stack is not None:
            await self._exit_stack.aclose()
            self._client = None
            self._exit_stack = None


def open_store(uri: str) -> ObjectStore:
    parsed = urlparse(uri)
    if parsed.scheme in ("s3", "s3a"):
        if not parsed.netloc:
            raise ValueError(f"S3 URI {uri!r} has no bucket")
        return S3Store(parsed.netloc, parsed.path)
    if parsed.scheme == "file":
        return LocalStore(parsed.path)
    if parsed.scheme == "":
        return LocalStore(uri)
    raise ValueError(f"unsupported object store URI {uri!r}: use s3://bucket/prefix or file:///path")
