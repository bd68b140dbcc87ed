"""File operations the job needs on its output and state, through Hadoop's FileSystem API.

One code path for local folders and S3 (S3A): the same calls Spark itself uses, so whatever
credentials and endpoint Spark has, these have too. Small JSON state files are read and written
here as well.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pyspark.sql import SparkSession

from .spark import to_hadoop_uri


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    mtime_ms: int


class Storage:
    def __init__(self, spark: SparkSession):
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _path(self, uri: str):
        return self._jvm.org.apache.hadoop.fs.Path(to_hadoop_uri(uri))

    def _fs(self, path):
        return path.getFileSystem(self._conf)

    def qualify(self, uri: str) -> str:
        """The one spelling Hadoop lists a path with (`file:/x`, `s3a://b/x`): manifests compare them."""
        path = self._path(uri)
        return str(self._fs(path).makeQualified(path).toString())

    def exists(self, uri: str) -> bool:
        path = self._path(uri)
        return bool(self._fs(path).exists(path))

    def list_files(self, uri: str, recursive: bool = True) -> list[FileEntry]:
        """Every file under `uri` (none when it does not exist), hidden files (. and _) skipped."""
        path = self._path(uri)
        fs = self._fs(path)
        if not fs.exists(path):
            return []
        found = []
        it = fs.listFiles(path, recursive)
        while it.hasNext():
            status = it.next()
            p = status.getPath()
            name = p.getName()
            if name.startswith((".", "_")):
                continue
            found.append(FileEntry(p.toString(), int(status.getLen()), int(status.getModificationTime())))
        return found

    def list_dirs(self, uri: str) -> list[str]:
        path = self._path(uri)
        fs = self._fs(path)
        if not fs.exists(path):
            return []
        return [s.getPath().toString() for s in fs.listStatus(path) if s.isDirectory()]

    def delete(self, uri: str, recursive: bool = False) -> bool:
        path = self._path(uri)
        return bool(self._fs(path).delete(path, recursive))

    def move(self, src: str, dst: str) -> None:
        source, target = self._path(src), self._path(dst)
        fs = self._fs(target)
        if fs.exists(target):
            fs.delete(target, False)
        fs.mkdirs(target.getParent())
        if not fs.rename(source, target):
            raise OSError(f"cannot move {src} to {dst}")

    def read_json(self, uri: str) -> dict | None:
        path = self._path(uri)
        fs = self._fs(path)
        if not fs.exists(path):
            return None
        stream = fs.open(path)
        try:
            data = self._jvm.org.apache.commons.io.IOUtils.toByteArray(stream)
        finally:
            stream.close()
        return json.loads(bytes(data).decode("utf-8"))

    def write_json(self, uri: str, value: dict) -> None:
        """Whole-file replace: written beside the target, then renamed over it."""
        data = json.dumps(value, indent=2, sort_keys=True).encode("utf-8")
        target = self._path(uri)
        fs = self._fs(target)
        tmp = self._path(uri + ".tmp")
        stream = fs.create(tmp, True)
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()
        if fs.exists(target):
            fs.delete(target, False)
        if not fs.rename(tmp, target):
            raise OSError(f"cannot write {uri}")


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out
