"""The reporting SQL layer and the metadata scan of each app (reference-system.md §5.3, §5.4); see docs/reporting.md."""

from .aggregates import AGGREGATES
from .materialize import Target, backfill, create_objects, last_refresh_date, object_sql, refresh
from .metadata import METADATA
from .metadata import scan as scan_metadata
from .views import BASE_VIEW, EVENT_VIEW

__all__ = [
    "AGGREGATES",
    "BASE_VIEW",
    "EVENT_VIEW",
    "METADATA",
    "Target",
    "backfill",
    "create_objects",
    "last_refresh_date",
    "object_sql",
    "refresh",
    "scan_metadata",
]
