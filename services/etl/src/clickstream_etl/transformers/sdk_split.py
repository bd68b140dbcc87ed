"""Split SDK request bodies into events over Arrow batches, and do the parts Spark does slowly.

Spark parses each event's scalars and reserved attributes (clickstream_sdk.EVENT_SCHEMA); what
needs each value's JSON type — custom parameters, user properties, items — is built here while
the body is split, from the same orjson parse. Measured on 92k SDK events: Spark's VARIANT map
route for custom parameters alone cost 4.3 s on two cores, this whole pass a fraction of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import orjson
import pyarrow as pa
from pyspark.sql import types as T
from pyspark.sql.pandas.types import from_arrow_type

from .. import columns as C
from ..plugins import RequestEnrichment

PARAM = pa.struct([("value", pa.string()), ("type", pa.string())])
USER_PROP = pa.struct([("value", pa.string()), ("type", pa.string()), ("set_time_msec", pa.int64())])
ITEM = pa.struct(
    [(name, pa.float64() if name in ("price", "quantity") else pa.string()) for name in C.ITEM_FIELDS]
    + [("custom_parameters", pa.map_(pa.string(), PARAM)), ("custom_parameters_json_str", pa.string())]
)
# Keys an item may carry for a field (the reference's Android SDK sent `id` and `item_name`).
ITEM_KEYS = {name: (name,) for name in C.ITEM_FIELDS} | {"item_id": ("item_id", "id"), "name": ("name", "item_name")}
ITEM_KNOWN = frozenset(k for keys in ITEM_KEYS.values() for k in keys)

PASSED = ("rid", "ingest_time_msec", "upload_time_msec", "app_id", "platform", "uri", "ua", "ip", "input_file")
OUT_FIELDS = [
    ("rid", pa.string()),
    ("ingest_time_msec", pa.int64()),
    ("upload_time_msec", pa.int64()),
    ("app_id", pa.string()),
    ("platform", pa.string()),
    ("uri", pa.string()),
    ("ua", pa.string()),
    ("ip", pa.string()),
    ("input_file", pa.string()),
    (C.EVENT_INDEX, pa.int32()),
    (C.PAYLOAD, pa.string()),
    ("split_error", pa.string()),
    ("custom_parameters_json_str", pa.string()),
    ("custom_parameters", pa.map_(pa.string(), PARAM)),
    (C.USER_PROPERTIES, pa.map_(pa.string(), USER_PROP)),
    (C.ITEMS, pa.list_(ITEM)),
]
OUT_SCHEMA = pa.schema(OUT_FIELDS)
OUT_DDL = (
    "rid string, ingest_time_msec bigint, upload_time_msec bigint, app_id string, platform string, uri string, "
    "ua string, ip string, input_file string, _event_index int, _payload string, split_error string, "
    "custom_parameters_json_str string, custom_parameters map<string,struct<value:string,type:string>>, "
    "_user_properties map<string,struct<value:string,type:string,set_time_msec:bigint>>, "
    "_items array<struct<"
    + ",".join(f"{n}:{'double' if n in ('price', 'quantity') else 'string'}" for n in C.ITEM_FIELDS)
    + ",custom_parameters:map<string,struct<value:string,type:string>>,custom_parameters_json_str:string>>"
)


def typed(value) -> tuple[str, str] | None:
    """(text, type) as the reference's value types: string, number, boolean, object."""
    if value is None:
        return None
    if isinstance(value, str):
        return value, "string"
    if isinstance(value, bool):
        return ("true" if value else "false"), "boolean"
    if isinstance(value, int | float):
        return orjson.dumps(value).decode(), "number"
    return orjson.dumps(value).decode(), "object"


def custom_parameters(values: dict, known: frozenset[str]) -> tuple[str | None, list | None]:
    kept = {k: v for k, v in values.items() if k not in known and v is not None}
    if not kept:
        return None, None
    return orjson.dumps(kept).decode(), [
        (k, dict(zip(("value", "type"), typed(v), strict=True))) for k, v in kept.items()
    ]


def _as_float(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _text(value) -> str | None:
    found = typed(value)
    return found[0] if found else None


def items(raw) -> list | None:
    if not isinstance(raw, list):
        return None
    out = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        row = {}
        for name, keys in ITEM_KEYS.items():
            value = next((item[k] for k in keys if item.get(k) is not None), None)
            row[name] = _as_float(value) if name in ("price", "quantity") else _text(value)
        if row["item_id"] is None:
            continue  # the reference skips an item without an id
        row["custom_parameters_json_str"], params = custom_parameters(item, ITEM_KNOWN)
        row["custom_parameters"] = params
        out.append(row)
    return out or None


def user_properties(user, reserved: frozenset[str]) -> list | None:
    if not isinstance(user, dict):
        return None
    out = []
    for key, entry in user.items():
        if key in reserved or not isinstance(entry, dict):
            continue
        found = typed(entry.get("value"))
        if found is None:
            continue
        stamp = entry.get("set_timestamp")
        stamp = stamp if isinstance(stamp, int) and not isinstance(stamp, bool) else None
        out.append((key, {"value": found[0], "type": found[1], "set_time_msec": stamp}))
    return out or None


def events_of(body, body_kind: str | None, error: str | None) -> list[tuple[object, str | None]]:
    """(event or None, error) per element of a body; one (None, reason) when the body is unusable."""
    if error:
        return [(None, error)]
    if body_kind == "other" or body is None:
        return [(None, "body is neither JSON nor Base64 of gzip")]
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return [(None, f"body is not valid JSON: {exc}")]
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list) or not parsed:
        return [(None, "body is not a JSON array of events")]
    return [(e, None if isinstance(e, dict) else "event is not a JSON object") for e in parsed]


def _as_bytes(value) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "replace")


class _Events:
    """Event-level columns of one batch; request-level ones are taken by index at the end."""

    def __init__(self, reserved_attributes: frozenset[str], reserved_user: frozenset[str]):
        self.reserved_attributes = reserved_attributes
        self.reserved_user = reserved_user
        self.request: list[int] = []
        self.cols: dict[str, list] = {name: [] for name in (C.EVENT_INDEX, C.PAYLOAD, "split_error", *EVENT_LEVEL)}

    def add_request(self, index: int, body, kind: str | None, error: str | None) -> None:
        cols = self.cols
        for position, (event, problem) in enumerate(events_of(body, kind, error)):
            self.request.append(index)
            cols[C.EVENT_INDEX].append(position)
            cols["split_error"].append(problem)
            if event is None or problem:
                cols[C.PAYLOAD].append(_as_bytes(body) if event is None else orjson.dumps(event))
                for name in EVENT_LEVEL:
                    cols[name].append(None)
                continue
            cols[C.PAYLOAD].append(orjson.dumps(event))
            attributes = event.get("attributes")
            json_str, params = (
                custom_parameters(attributes, self.reserved_attributes)
                if isinstance(attributes, dict)
                else (None, None)
            )
            cols["custom_parameters_json_str"].append(json_str)
            cols["custom_parameters"].append(params)
            cols[C.USER_PROPERTIES].append(
                user_properties(event.get("user"), self.reserved_user)
                if event.get("event_type") == "_profile_set"
                else None
            )
            cols[C.ITEMS].append(items(event.get("items")))

    def batch(
        self, request_columns: dict[str, pa.Array], enrichments: Sequence[RequestEnrichment] = ()
    ) -> pa.RecordBatch:
        take = pa.array(self.request, type=pa.int32())
        arrays = []
        for name, type_ in OUT_FIELDS:
            if name in request_columns:
                arrays.append(request_columns[name].take(take).cast(type_))
            elif name == C.PAYLOAD:
                arrays.append(pa.array(self.cols[name], type=pa.binary()).cast(pa.string()))
            else:
                arrays.append(pa.array(self.cols[name], type=type_))
        fields = list(OUT_FIELDS)
        for enrichment in enrichments:
            # Per request, then copied to its events: a request's events share its header and address.
            computed = enrichment.compute(request_columns[enrichment.source])
            for (name, type_), values in zip(enrichment.fields, computed, strict=True):
                arrays.append(values.take(take).cast(type_))
                fields.append((name, type_))
        return pa.RecordBatch.from_arrays(arrays, schema=OUT_SCHEMA if not enrichments else pa.schema(fields))


EVENT_LEVEL = ("custom_parameters_json_str", "custom_parameters", C.USER_PROPERTIES, C.ITEMS)


def out_schema(enrichments: Sequence[RequestEnrichment] = ()) -> T.StructType:
    """The Spark schema of the split rows, with the columns of the fused enrichments at the end."""
    schema = T._parse_datatype_string(OUT_DDL)
    for enrichment in enrichments:
        for name, type_ in enrichment.fields:
            schema = schema.add(name, from_arrow_type(type_))
    return schema


def split_lines(
    batches: Iterator[pa.RecordBatch],
    reserved_attributes: frozenset[str],
    reserved_user: frozenset[str],
    enrichments: Sequence[RequestEnrichment] = (),
):
    """Raw lines (`value`, `input_file`) -> event rows, decoding each request on the way."""
    from ..decode import ENVELOPE, parse_request

    for batch in batches:
        events = _Events(reserved_attributes, reserved_user)
        envelopes: dict[str, list] = {name: [] for name in ENVELOPE}
        for index, line in enumerate(batch.column("value").to_pylist()):
            envelope, body, kind, error = parse_request(line)
            for name in ENVELOPE:
                envelopes[name].append(envelope[name])
            events.add_request(index, body, kind, error)
        request_columns = {
            name: pa.array(values).cast(OUT_SCHEMA.field(name).type)
            for name, values in envelopes.items()
            if name in PASSED
        }
        request_columns["input_file"] = batch.column("input_file")
        yield events.batch(request_columns, enrichments)


def split_requests(
    batches: Iterator[pa.RecordBatch],
    reserved_attributes: frozenset[str],
    reserved_user: frozenset[str],
    enrichments: Sequence[RequestEnrichment] = (),
):
    """Decoded requests (decode.REQUEST_DDL) -> event rows."""
    for batch in batches:
        events = _Events(reserved_attributes, reserved_user)
        bodies = batch.column("body").to_pylist()
        kinds = batch.column("body_kind").to_pylist()
        errors = batch.column("error").to_pylist()
        for index in range(batch.num_rows):
            events.add_request(index, bodies[index], kinds[index], errors[index])
        yield events.batch({name: batch.column(name) for name in PASSED}, enrichments)
