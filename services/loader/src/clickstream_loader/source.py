"""Reading one Parquet file as Arrow batches in a table's column order, maps and structs turned into JSON text.

Local paths and `s3://` (pyarrow's S3 filesystem, honouring AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL) are read the
same way. Columns missing from a file come back as nulls (an older file of an evolved schema); columns the
table does not have are ignored. DuckDB, in-process, renders the maps as JSON (`to_json`): the same text the
DuckDB views expose, so both engines see the same JSON.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cache
from urllib.parse import urlparse

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from clickstream_core.tables import TABLES

from .schema import is_json, quote

BATCH_ROWS = 65_536


@cache
def _s3fs():
    from pyarrow import fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    if endpoint:
        parsed = urlparse(endpoint)
        return fs.S3FileSystem(
            endpoint_override=parsed.netloc or endpoint, scheme=parsed.scheme or "https", region=region
        )
    return fs.S3FileSystem(region=region)


def open_parquet(uri: str) -> pq.ParquetFile:
    parsed = urlparse(uri)
    if parsed.scheme in ("s3", "s3a"):
        return pq.ParquetFile(_s3fs().open_input_file(f"{parsed.netloc}{parsed.path}"))
    return pq.ParquetFile(parsed.path if parsed.scheme == "file" else uri)


class ParquetReader:
    """Batches of a table's columns from its Parquet files; one in-process DuckDB for the JSON conversion."""

    def __init__(self, threads: int = 2):
        self.duck = duckdb.connect(config={"threads": threads, "preserve_insertion_order": True})

    def close(self) -> None:
        self.duck.close()

    def batches(
        self, uri: str, table: str, batch_rows: int = BATCH_ROWS, only: tuple[str, ...] | None = None
    ) -> Iterator[list[pa.Array]]:
        """The table's columns (or those named in `only`, in table order) of one file, batch by batch."""
        columns = [c for c in TABLES[table].columns if only is None or c.name in only]
        parquet = open_parquet(uri)
        present = set(parquet.schema_arrow.names)
        wanted = [c.name for c in columns if c.name in present]
        json_cols = [c.name for c in columns if is_json(c) and c.name in present]
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=wanted):
            n = batch.num_rows
            if n == 0:
                continue
            got = {c: batch.column(c) for c in wanted}
            if json_cols:
                # DuckDB keeps the input order (preserve_insertion_order), so the JSON columns stay aligned
                self.duck.register("_batch", pa.Table.from_batches([batch.select(json_cols)]))
                select = ", ".join(f"to_json({quote(c)})::varchar AS {quote(c)}" for c in json_cols)
                result = self.duck.sql(f"SELECT {select} FROM _batch").arrow()  # noqa: S608 (quoted names)
                if isinstance(result, pa.RecordBatchReader):
                    result = result.read_all()
                self.duck.unregister("_batch")
                if result.num_rows != n:
                    raise RuntimeError(f"JSON conversion of {uri} returned {result.num_rows} rows, expected {n}")
                got.update({c: result.column(c) for c in json_cols})
            out = [got[c.name] if c.name in got else pa.nulls(n) for c in columns]
            yield out
