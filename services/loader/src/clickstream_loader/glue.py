"""The Athena side (reference-system.md §4.8, §5.5): a Glue database with the four tables over the ETL's Parquet,
their partitions, and the reference's named-query texts.

Each table: Parquet SerDe, the data model's columns (`clickstream_core.tables`: Spark DDL types are Hive types),
partition keys `partition_app`, `partition_year`, `partition_month`, `partition_day` (strings), location
`<source>/<table>/`. Each pass adds the partitions of the discovered files (`batch_create_partition`, 100 at a
time; partitions that exist already are not an error), so Athena sees new days without `MSCK REPAIR TABLE`
(the reference runs a daily partition-syncer Lambda instead). Runs alongside any warehouse engine when
LOADER_GLUE_DATABASE is set. aiobotocore Glue client; the endpoint honours `AWS_ENDPOINT_URL_GLUE` /
`AWS_ENDPOINT_URL`.

The named queries ("Clickstream - All Data Query", "- Event Query", "- User Query", "- Session Query", "- Item
Query") are written in PostgreSQL's dialect and rendered for Athena by sqlrender; `?` are Athena execution
parameters: the app id, then the first and last day as `YYYYMMDD`. Each pass puts them into the Athena workgroup
(LOADER_ATHENA_WORKGROUP, default `primary`), as the reference's data-modeling-on-Athena stack does: a named query
is ours when its name and database match; CreateNamedQuery cannot replace one, so the workgroup's queries are listed
(ListNamedQueries + BatchGetNamedQuery), a missing one is created and one whose text or description differs is
updated in place (UpdateNamedQuery). Nothing changes when they are current, so passes never add duplicates.
Listing a whole workgroup is many calls, so a process compares again only when its texts changed (a new loader
version) or NAMED_QUERY_RECHECK_S after its last comparison (a hand edit is undone within that time).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from clickstream_core.tables import PARTITION_COLUMNS, TABLES

from .discovery import DataFile, run_blocking, table_root
from .schema import TABLE_NAMES, quote
from .sqlrender import render

PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
PARQUET_INPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
PARQUET_OUTPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"


def hive_type(type_: str) -> str:
    """clickstream_core's Spark DDL type as Glue/Hive spells it (the same words, lower case)."""
    return type_.replace(" ", "").lower()


def _storage(location: str, columns: list[dict] | None = None) -> dict:
    descriptor = {
        "Location": location,
        "InputFormat": PARQUET_INPUT,
        "OutputFormat": PARQUET_OUTPUT,
        "SerdeInfo": {"SerializationLibrary": PARQUET_SERDE, "Parameters": {"serialization.format": "1"}},
        "Compressed": True,
    }
    if columns is not None:
        descriptor["Columns"] = columns
    return descriptor


def s3_location(uri: str) -> str:
    return "s3://" + uri.split("://", 1)[1].rstrip("/") + "/"


def table_input(source: str, table: str) -> dict:
    columns = [{"Name": c.name, "Type": hive_type(c.type)} for c in TABLES[table].columns]
    return {
        "Name": table,
        "TableType": "EXTERNAL_TABLE",
        "Parameters": {"classification": "parquet", "EXTERNAL": "TRUE", "parquet.compression": "SNAPPY"},
        "StorageDescriptor": _storage(s3_location(table_root(source, table)), columns),
        "PartitionKeys": [{"Name": name, "Type": "string"} for name in PARTITION_COLUMNS],
    }


def partition_values(f: DataFile) -> tuple[str, str, str, str]:
    day = f.event_day
    return (f.app_id, f"{day.year:04d}", f"{day.month:02d}", f"{day.day:02d}")


def partition_input(source: str, table: str, values: tuple[str, ...]) -> dict:
    path = "/".join(f"{k}={v}" for k, v in zip(PARTITION_COLUMNS, values, strict=True))
    return {"Values": list(values), "StorageDescriptor": _storage(s3_location(f"{table_root(source, table)}/{path}"))}


async def _ignore_exists(call) -> bool:
    """True when the call created something, False when it existed already."""
    try:
        await call
    except Exception as exc:  # botocore ClientError (or the client's modeled AlreadyExistsException)
        if getattr(exc, "response", {}).get("Error", {}).get("Code") == "AlreadyExistsException":
            return False
        raise
    return True


async def ensure_catalog(glue, database: str, source: str) -> None:
    """The database and the four tables (existing tables get the current columns and location)."""
    await _ignore_exists(
        glue.create_database(
            DatabaseInput={"Name": database, "Description": "Clickstream analytics: the ETL's tables (clickstream)"}
        )
    )
    for table in TABLE_NAMES:
        spec = table_input(source, table)
        if not await _ignore_exists(glue.create_table(DatabaseName=database, TableInput=spec)):
            await glue.update_table(DatabaseName=database, TableInput=spec)


async def add_partitions(glue, database: str, source: str, files: Iterable[DataFile]) -> int:
    """Creates the partitions of `files` that do not exist yet; returns how many were created."""
    wanted: dict[str, set[tuple[str, str, str, str]]] = {}
    for f in files:
        wanted.setdefault(f.table, set()).add(partition_values(f))
    created = 0
    for table, values in sorted(wanted.items()):
        ordered = sorted(values)
        for start in range(0, len(ordered), 100):
            chunk = ordered[start : start + 100]
            answer = await glue.batch_create_partition(
                DatabaseName=database,
                TableName=table,
                PartitionInputList=[partition_input(source, table, v) for v in chunk],
            )
            errors = answer.get("Errors", [])
            fatal = [e for e in errors if e.get("ErrorDetail", {}).get("ErrorCode") != "AlreadyExistsException"]
            if fatal:
                detail = fatal[0].get("ErrorDetail", {})
                raise RuntimeError(
                    f"glue partitions of {database}.{table}: {detail.get('ErrorCode')}: {detail.get('ErrorMessage')}"
                )
            created += len(chunk) - len(errors)
    return created


@dataclass
class CatalogSync:
    """What one pass changed on the Athena side (RunReport.glue_partitions, RunReport.athena_queries)."""

    partitions: int = 0  # Glue partitions created
    queries_created: list[str] = field(default_factory=list)  # named queries created, by name
    queries_updated: list[str] = field(default_factory=list)  # named queries whose text or description was updated


async def sync_async(
    database: str,
    source: str,
    files: list[DataFile],
    workgroup: str = "primary",
    glue=None,
    athena=None,
    recheck_s: float | None = None,
) -> CatalogSync:
    if glue is not None and athena is not None:
        await ensure_catalog(glue, database, source)
        result = CatalogSync(partitions=await add_partitions(glue, database, source, files))
        result.queries_created, result.queries_updated = await ensure_named_queries(
            athena, database, workgroup, recheck_s
        )
        return result
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    config = AioConfig(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=60)
    session = get_session()
    async with (
        session.create_client("glue", region_name=region, config=config) as glue_client,
        session.create_client("athena", region_name=region, config=config) as athena_client,
    ):
        return await sync_async(database, source, files, workgroup, glue_client, athena_client, recheck_s)


def sync_catalog(
    database: str, source: str, files: list[DataFile], workgroup: str = "primary", recheck_s: float | None = None
) -> CatalogSync:
    """runner.run_once's Athena step (synchronous): the Glue catalog, the files' partitions, the named queries
    (compared with the workgroup again after `recheck_s`, default NAMED_QUERY_RECHECK_S)."""
    return run_blocking(sync_async(database, source, files, workgroup, recheck_s=recheck_s))


# ------------------------------------------------------------------------------------------ named queries

_PARTITION_FILTER = (
    "{a}partition_app = ? AND {a}partition_year || {a}partition_month || {a}partition_day BETWEEN ? AND ?"
)


def _select(database: str, table: str, alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    return ", ".join(f"{prefix}{quote(c)}" for c in TABLES[table].names)


def named_queries(database: str) -> dict[str, str]:
    """The reference's Athena named queries (name -> Athena SQL), each filtered by app and a range of days."""
    db = quote(database)
    queries = {}
    for table, title in (("event_v2", "Event"), ("user_v2", "User"), ("session", "Session"), ("item_v2", "Item")):
        queries[f"Clickstream - {title} Query"] = render(
            f"SELECT {_select(database, table)}, partition_app, partition_year, partition_month, partition_day "  # noqa: S608
            f"FROM {db}.{quote(table)} WHERE {_PARTITION_FILTER.format(a='')}",
            "athena",
        )
    taken = set(TABLES["event_v2"].names)

    def joined(alias: str, table: str, prefix: str, skip: tuple[str, ...]) -> str:
        # the joined table's columns, renamed with `prefix` where the name is already an output column
        out = []
        for c in TABLES[table].names:
            if c in skip:
                continue
            name = c if c not in taken else prefix + c
            taken.add(name)
            out.append(f"{alias}.{quote(c)} AS {quote(name)}")
        return ", ".join(out)

    user_cols = joined("u", "user_v2", "user_", ("user_pseudo_id", "user_id"))
    session_cols = joined("s", "session", "session_", ("user_pseudo_id", "session_id", "user_id"))
    queries["Clickstream - All Data Query"] = render(
        f"SELECT {_select(database, 'event_v2', 'e')}, {user_cols}, {session_cols} "  # noqa: S608
        f"FROM {db}.{quote('event_v2')} AS e "
        f"LEFT JOIN {db}.{quote('user_v2')} AS u ON u.partition_app = e.partition_app "
        "AND u.user_pseudo_id = e.user_pseudo_id "
        f"LEFT JOIN {db}.{quote('session')} AS s ON s.partition_app = e.partition_app "
        "AND s.user_pseudo_id = e.user_pseudo_id AND s.session_id = e.session_id "
        f"WHERE {_PARTITION_FILTER.format(a='e.')}",
        "athena",
    )
    return queries


def query_description(name: str) -> str:
    return (
        f"{name} (clickstream loader): execution parameters app id, first day, last day (YYYYMMDD); "
        "partitions are added by the loader, no MSCK REPAIR needed"
    )


_BATCH = 50  # ListNamedQueries' largest page and BatchGetNamedQuery's largest batch
NAMED_QUERY_RECHECK_S = 3600.0
# (database, workgroup) -> (digest of the texts found current, monotonic time of that comparison)
_current: dict[tuple[str, str], tuple[str, float]] = {}


async def _named_queries_in(athena, workgroup: str) -> list[dict]:
    """Every named query of the workgroup (Name, Database, QueryString, Description, NamedQueryId)."""
    ids: list[str] = []
    async for page in athena.get_paginator("list_named_queries").paginate(
        WorkGroup=workgroup, PaginationConfig={"PageSize": _BATCH}
    ):
        ids += page.get("NamedQueryIds", [])
    found: list[dict] = []
    for start in range(0, len(ids), _BATCH):
        answer = await athena.batch_get_named_query(NamedQueryIds=ids[start : start + _BATCH])
        found += answer.get("NamedQueries", [])
        for miss in answer.get("UnprocessedNamedQueryIds", []):
            # deleted since the listing (skipped), or a transient error: ask once more for that one, so that a
            # query of ours is never taken for missing (which would create a duplicate)
            try:
                found.append((await athena.get_named_query(NamedQueryId=miss["NamedQueryId"]))["NamedQuery"])
            except Exception as exc:
                if getattr(exc, "response", {}).get("Error", {}).get("Code") != "InvalidRequestException":
                    raise
    return found


async def ensure_named_queries(
    athena, database: str, workgroup: str, recheck_s: float | None = None
) -> tuple[list[str], list[str]]:
    """The reference's named queries in `workgroup`: created when missing, updated when their text or description
    changed, untouched otherwise. A query is ours when its name and database match (UpdateNamedQuery cannot move
    a query to another database, and another project's queries of the same name are not ours). Returns the names
    created and updated; nothing is asked of Athena when this process found the same texts current less than
    `recheck_s` ago."""
    wanted = named_queries(database)
    digest = hashlib.sha256(repr(sorted(wanted.items())).encode()).hexdigest()
    key = (database, workgroup)
    recheck_s = NAMED_QUERY_RECHECK_S if recheck_s is None else recheck_s
    known = _current.get(key)
    if known is not None and known[0] == digest and time.monotonic() - known[1] < recheck_s:
        return [], []
    ours: dict[str, list[dict]] = {}
    for query in await _named_queries_in(athena, workgroup):
        if query.get("Database") == database and query.get("Name") in wanted:
            ours.setdefault(query["Name"], []).append(query)
    created, updated = [], []
    for name, text in sorted(wanted.items()):
        description = query_description(name)
        if name not in ours:
            # botocore fills ClientRequestToken, so a retried request after a lost answer creates it once
            await athena.create_named_query(
                Name=name, Description=description, Database=database, QueryString=text, WorkGroup=workgroup
            )
            created.append(name)
            continue
        for query in ours[name]:  # normally one; copies made by hand are kept current too
            if query.get("QueryString") != text or query.get("Description", "") != description:
                await athena.update_named_query(
                    NamedQueryId=query["NamedQueryId"], Name=name, Description=description, QueryString=text
                )
                if name not in updated:
                    updated.append(name)
    _current[key] = (digest, time.monotonic())
    return created, updated
