"""Raw objects for ETL tests: records as the ingest worker writes them, with a chosen write time."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from clickstream_core import raw_record

FIXTURES = Path("/work/shared/fixtures") if Path("/work/shared/fixtures").is_dir() else None
UA_CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)


def fixtures_dir() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "fixtures"
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("shared/fixtures not found beside the repository")


def line(
    events: list[dict] | str,
    *,
    ingest_ms: int,
    app_id: str = "shop",
    upload_ms: int | None = None,
    ua: str | None = UA_CHROME,
    ip: str = "203.0.113.7",
    rid: str | None = None,
    gzip_base64: bool = False,
) -> bytes:
    """One raw record whose body carries `events` (or a literal body text)."""
    import base64

    body = events if isinstance(events, str) else json.dumps(events)
    if gzip_base64:
        body = base64.b64encode(gzip.compress(body.encode())).decode()
    query = f"platform=Web&appId={app_id}&event_bundle_sequence_id=1"
    if upload_ms is not None:
        query += f"&upload_timestamp={upload_ms}"
    return raw_record.build_line(
        body=body,
        ip=ip,
        rid=rid or os.urandom(16).hex(),
        ua=ua,
        uri=f"/collect?{query}",
        path="/collect",
        platform="Web",
        app_id=app_id,
        compression="gzip" if gzip_base64 else None,
        upload_timestamp=None if upload_ms is None else str(upload_ms),
        fake_ip=None,
        arrival=raw_record.Arrival.at(ingest_ms),
    )


def recorded_lines(name: str, only_ok: bool = False) -> list[bytes]:
    """The raw records the edge would have written for a web SDK recording (POSTs only)."""
    out = []
    for text in (fixtures_dir() / "web-sdk" / name).read_text().splitlines():
        req = json.loads(text)
        if req["method"] != "POST" or (only_ok and req["response_status"] != 200):
            continue
        headers = {k.lower(): v for k, v in req["headers"]}
        query = parse_qs(urlsplit(req["raw_target"]).query)
        out.append(
            raw_record.build_line(
                body=req["body_text"],
                ip="203.0.113.7",
                rid=f"{req['seq']:032x}",
                ua=headers.get("user-agent"),
                uri=req["raw_target"],
                path=req["path"],
                platform=query.get("platform", [None])[0],
                app_id=query.get("appId", [None])[0],
                compression=query.get("compression", [None])[0],
                upload_timestamp=query.get("upload_timestamp", [None])[0],
                fake_ip=None,
                arrival=raw_record.Arrival.at(req["t"]),
            )
        )
    return out


def write_object(source: Path, lines: list[bytes], written_ms: int, name: str = "obj") -> Path:
    """A gzip NDJSON object under the contract's key, its modification time set to `written_ms`."""
    key = raw_record.raw_object_key("", written_ms / 1000, name)
    path = source / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b"".join(lines)))
    os.utime(path, ns=(written_ms * 1_000_000, written_ms * 1_000_000))
    return path


def read_bad_rows(sink: Path) -> list[dict]:
    rows = []
    for path in sorted((sink / "bad_rows").rglob("*.json.gz")):
        rows += [json.loads(x) for x in gzip.decompress(path.read_bytes()).splitlines() if x.strip()]
    return rows


def write_records(path: Path, records: list[dict | str]) -> str:
    """Raw records (dicts, or literal lines) as a plain NDJSON object; its path."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def record(rid: str, data, **extra) -> dict:
    """A minimal raw record carrying `data` (JSON-encoded unless already text)."""
    base = {"appId": "app1", "ingest_time": 1700000000000, "ip": "10.1.2.3", "rid": rid, "ua": "request-ua"}
    return {**base, "data": data if isinstance(data, str) else json.dumps(data), **extra}
