"""Event dedup by event_id: within the run, and against output already written.

The SDKs resend a whole batch when an upload fails, so the same event can arrive in several
requests, in one window or in the next. The first arrival (ingest time, request id, position)
is kept; every other copy becomes a `duplicate` bad row. Only narrow keys are shuffled: the ids
that need a decision are few, and are joined back to the (cached) events.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from . import columns as C


def _arrival_key():
    return F.struct(F.col("ingest_time_msec"), F.col(C.RID), F.col(C.EVENT_INDEX))


def flags(events: DataFrame, existing_ids: DataFrame | None) -> DataFrame:
    """Per event id that needs a decision: the arrival to keep and whether it is already written.

    `existing_ids` (one column `event_id`) are ids already in the output: all copies of them are
    duplicates. Rows already rejected for another reason take no part.
    """
    candidates = events.where(F.col(C.BAD_REASON).isNull())
    keys = candidates.groupBy("event_id").agg(F.min(_arrival_key()).alias("_keep"), F.count("*").alias("_copies"))
    flagged = keys.where(F.col("_copies") > 1).select("event_id", "_keep", F.lit(False).alias("_seen"))
    if existing_ids is not None:
        seen = keys.join(existing_ids.distinct(), "event_id", "left_semi").select(
            "event_id", "_keep", F.lit(True).alias("_seen")
        )
        flagged = (
            flagged.unionByName(seen)
            .groupBy("event_id")
            .agg(F.first("_keep").alias("_keep"), F.max("_seen").alias("_seen"))
        )
    return flagged


# Flagged ids up to this many are broadcast to the events: a sort-merge join would shuffle and sort
# every wide event row (it cost the benchmark's event_v2 write more than the write itself).
BROADCAST_MAX_IDS = 2_000_000


def mark(events: DataFrame, flagged: DataFrame, flagged_count: int | None = None) -> DataFrame:
    """`events` with `_bad_reason='duplicate'` on every copy that is not the one kept.

    `flagged_count` (rows of `flagged`, when the caller counted them) lets a small set be broadcast,
    and none at all leaves the events as they are: every later read of the cache (each table
    written, the bad rows, the counts) then skips a join of every wide row.
    """
    if flagged_count == 0:
        return events
    if flagged_count is not None and flagged_count <= BROADCAST_MAX_IDS:
        flagged = F.broadcast(flagged)
    joined = events.join(flagged, "event_id", "left")
    duplicate = F.col(C.BAD_REASON).isNull() & (
        F.coalesce(F.col("_seen"), F.lit(False)) | (F.col("_keep").isNotNull() & (_arrival_key() != F.col("_keep")))
    )
    detail = F.when(F.col("_seen"), F.lit("event_id already in the output")).otherwise(
        F.concat(F.lit("event_id seen first in request "), F.col("_keep").getField(C.RID))
    )
    return joined.withColumns(
        {
            C.BAD_REASON: F.when(duplicate, F.lit("duplicate")).otherwise(F.col(C.BAD_REASON)),
            C.BAD_DETAIL: F.when(duplicate, detail).otherwise(F.col(C.BAD_DETAIL)),
        }
    ).drop("_keep", "_seen")
