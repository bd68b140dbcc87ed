"""Why a raw event did not become a good row. One event in, exactly one record out: every event
that is not in event_v2 is in the bad-rows output with one of these reasons and its payload."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    CORRUPT = "corrupt"  # the request or the event cannot be decoded as the transformer's format
    MISSING_FIELD = "missing_field"  # a required field (event_id, app_id, timestamp, ...) is absent
    UNKNOWN_APP = "unknown_app"  # the event's app id is not registered in the project
    TOO_LATE = "too_late"  # older than the freshness window when it arrived
    IN_FUTURE = "in_future"  # later than its arrival beyond the skew tolerance
    BOT = "bot"  # the user agent is a bot (user_agent enricher, filter on)
    DUPLICATE = "duplicate"  # an event with this event_id was kept already (this run or the lookback)
    EVENT_NOT_ALLOWED = "event_not_allowed"  # not in the optional event allow-list
