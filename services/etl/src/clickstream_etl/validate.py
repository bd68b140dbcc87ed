"""Checks every transformer's output gets: clock-skew correction, freshness, future, app id.

Rules (reference-system.md §4.4, §4.6), with one change: nothing is dropped, a rejected event is
routed to the bad rows with its reason.
- Skew: when the client's upload clock differs from the server's by more than 10 minutes and the
  event is later than its arrival (or time shifting is on), every client timestamp of the event
  moves by (ingest - upload); one still later than its arrival gets the arrival time. An event
  more than 10 minutes after its arrival that cannot be corrected is `in_future`; up to 10 minutes
  ahead is clock noise and kept as sent.
- Freshness: an event that arrived more than `freshness_hours` after it happened is `too_late`,
  except _first_open, _first_visit and _profile_set.
- App id: with registered apps, an event of another app is `unknown_app`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from . import columns as C
from .badrows import Reason

SKEW_THRESHOLD_MS = 600_000
ALWAYS_FRESH = ("_first_open", "_first_visit", "_profile_set")
# Client clock fields moved together with the event time.
SHIFTED = (
    "session_start_time_msec",
    "page_view_previous_time_msec",
    "screen_view_previous_time_msec",
    "user_first_touch_time_msec",
)


@dataclass(frozen=True)
class Checks:
    freshness_hours: float = 72.0
    time_shift: bool = False  # shift whenever upload and arrival clocks differ > 10 min
    app_ids: tuple[str, ...] | None = None
    event_allow_list: tuple[str, ...] | None = None


def _reject(df: DataFrame, condition: Column, reason: Reason, detail: Column) -> DataFrame:
    fresh = F.col(C.BAD_REASON).isNull() & condition
    return df.withColumns(
        {
            C.BAD_REASON: F.when(fresh, F.lit(reason.value)).otherwise(F.col(C.BAD_REASON)),
            C.BAD_DETAIL: F.when(fresh, detail).otherwise(F.col(C.BAD_DETAIL)),
        }
    )


def apply(df: DataFrame, checks: Checks) -> DataFrame:
    ingest = F.col("ingest_time_msec")
    upload = F.col(C.UPLOAD_TIME)
    event = F.col("event_time_msec")
    diff = ingest - upload
    skewed = upload.isNotNull() & (F.abs(diff) > SKEW_THRESHOLD_MS)
    shift = skewed & ((event > ingest) | F.lit(checks.time_shift))
    shifted = F.when(shift, event + diff).otherwise(event)
    # A shifted event still after its arrival gets the arrival time, as the reference does.
    clamp = shift & (shifted > ingest)
    final_event = F.when(clamp, ingest).otherwise(shifted)
    reason = F.when(event > ingest, F.lit("event_in_future_client_clock_skew")).otherwise(F.lit("client_clock_skew"))
    info = F.when(
        shift,
        F.map_concat(
            F.col("process_info"),
            F.create_map(
                F.lit("event_timestamp_adjusted"), F.lit("true"),
                F.lit("event_timestamp_adjusted_from"), event.cast("string"),
                F.lit("event_timestamp_adjusted_to"), final_event.cast("string"),
                F.lit("event_timestamp_adjusted_reason"), reason,
            ),
        ),
    ).otherwise(F.col("process_info"))  # fmt: skip
    moved = {c: F.when(shift & F.col(c).isNotNull(), F.col(c) + diff).otherwise(F.col(c)) for c in SHIFTED}
    df = df.withColumns(
        {
            **moved,
            "event_time_msec": final_event,
            "event_timestamp": F.timestamp_millis(final_event),
            "process_info": info,
        }
    )
    # Clocks a few minutes ahead are noise (and the reference's ingest times are whole seconds);
    # beyond the tolerance, with no upload time to correct it, the time cannot be trusted.
    df = _reject(
        df,
        F.col("event_time_msec") > ingest + SKEW_THRESHOLD_MS,
        Reason.IN_FUTURE,
        F.concat(F.lit("event time "), event.cast("string"), F.lit(" is after its arrival "), ingest.cast("string")),
    )
    too_old = (ingest - F.col("event_time_msec")) > F.lit(int(checks.freshness_hours * 3_600_000))
    df = _reject(
        df,
        too_old & ~F.col("event_name").isin(*ALWAYS_FRESH),
        Reason.TOO_LATE,
        F.concat(F.lit(f"arrived more than {checks.freshness_hours:g} h after event time "), event.cast("string")),
    )
    if checks.app_ids is not None:
        df = _reject(
            df,
            ~F.col("app_id").isin(*checks.app_ids) if checks.app_ids else F.lit(True),
            Reason.UNKNOWN_APP,
            F.concat(F.lit("app id "), F.col("app_id"), F.lit(" is not registered")),
        )
    if checks.event_allow_list is not None:
        df = _reject(
            df,
            ~F.col("event_name").isin(*checks.event_allow_list),
            Reason.EVENT_NOT_ALLOWED,
            F.concat(F.lit("event "), F.col("event_name"), F.lit(" is not in the allow-list")),
        )
    return df
