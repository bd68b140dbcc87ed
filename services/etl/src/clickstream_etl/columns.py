"""Internal columns that travel with event rows between the job's stages; never written."""

from __future__ import annotations

BAD_REASON = "_bad_reason"  # a reason of badrows.Reason when the row is rejected, else null
BAD_DETAIL = "_bad_detail"  # a human-readable detail of the rejection
PAYLOAD = "_payload"  # the event exactly as received (JSON text), kept for bad rows and replays
RID = "_rid"
INPUT_FILE = "_input_file"
UPLOAD_TIME = "_upload_time_msec"  # the client's upload time of the request (skew correction)
EVENT_INDEX = "_event_index"  # position of the event in its request (stable dedup order)
ITEMS = "_items"  # array<struct<item fields..., custom map>> of the event
USER_PROPERTIES = "_user_properties"  # map<string,struct<value,type,set_time_msec>> of the event
UA = "ua"  # request User-Agent (the reference keeps the names ua/ip until the write)
IP = "ip"  # client address (first of a comma list)

INTERNAL = (BAD_REASON, BAD_DETAIL, PAYLOAD, RID, INPUT_FILE, UPLOAD_TIME, EVENT_INDEX, ITEMS, USER_PROPERTIES, UA, IP)

# What a transformer must return (besides any subset of the event_v2 columns; the job adds the
# missing ones as nulls so every enricher sees the full set).
REQUIRED_EVENT_COLUMNS = (
    "event_timestamp",
    "event_id",
    "event_time_msec",
    "event_name",
    "ingest_time_msec",
    "project_id",
    "app_id",
    "user_pseudo_id",
    "platform",
)
ITEM_FIELDS = (
    "item_id name brand currency price quantity creative_name creative_slot location_id "
    "category category2 category3 category4 category5"
).split()
