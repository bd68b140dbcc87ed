"""The metadata scan (event names, parameters with types and top values, user attributes) on both engines, on
the dataset of tests/loader/dataset.py. That both engines give the same rows is in test_reporting.py."""

from __future__ import annotations

import pytest
from clickstream_loader import reporting
from clickstream_loader.reporting import metadata

from .dataset import D1, D2, D3, D4, LONG_NOTE, PROJECT_ID
from .reportkit import backfill_all, build

ENGINES = ("postgres", "duckdb")


@pytest.fixture(scope="module")
def wh(pg_cluster, tmp_path_factory):
    warehouses = build(pg_cluster, tmp_path_factory.mktemp("metadata"), "metadata_utc")
    backfill_all(warehouses)
    yield warehouses
    warehouses.pg.close()
    warehouses.duck.close()


def values(rows):
    return {r["property_value"]: (r["value_count"], r["value_rank"]) for r in rows}


@pytest.mark.parametrize("engine", ENGINES)
def test_event_names_per_day(wh, engine):
    rows = wh.rows(engine, metadata.EVENT_METADATA, '"event_date" = :d', {"d": D1})
    got = {(r["event_name"], r["platform"], r["sdk_version"]): r["event_count"] for r in rows}
    # D1: A1 (Web, SDK 0.12.0) has 8 events, B1 (Android, 0.14.0) 5
    assert got[("click", "Web", "0.12.0")] == 3
    assert got[("_page_view", "Web", "0.12.0")] == 2
    assert got[("_app_exception", "Android", "0.14.0")] == 1
    assert sum(got.values()) == 8 + 5
    assert {(r["project_id"], r["app_id"]) for r in rows} == {(PROJECT_ID, wh.target.app_id)}


@pytest.mark.parametrize("engine", ENGINES)
def test_custom_parameters_with_types_and_top_values(wh, engine):
    def param(name, day=D1):
        return wh.rows(
            engine,
            metadata.EVENT_PARAMETER_METADATA,
            '"event_date" = :d AND "event_name" = \'click\' AND "category" = \'custom\' AND "property_name" = :p',
            {"d": day, "p": name},
        )

    button = param("button")
    # A1's clicks: buy, buy, share
    assert values(button) == {"buy": (2, 1), "share": (1, 2)}
    assert {(r["value_type"], r["property_count"]) for r in button} == {("string", 3)}
    assert [(r["value_type"], r["property_value"]) for r in param("price")] == [("number", "9.99")]
    assert [r["property_value"] for r in param("note")] == [LONG_NOTE[: metadata.VALUE_CHARS]]
    assert values(param("button", D2)) == {"subscribe": (1, 1)}


@pytest.mark.parametrize("engine", ENGINES)
def test_preset_columns_are_scanned(wh, engine):
    rows = wh.rows(
        engine,
        metadata.EVENT_PARAMETER_METADATA,
        '"event_date" = :d AND "event_name" = \'_page_view\' AND "property_name" = \'page_view_page_url_path\'',
        {"d": D1},
    )
    assert values(rows) == {"/home": (1, 1), "/product": (1, 2)}  # equal counts: ordered by value
    assert {(r["category"], r["value_type"]) for r in rows} == {("page_view", "string")}
    geo = wh.rows(engine, metadata.EVENT_PARAMETER_METADATA, "\"property_name\" = 'geo_country'")
    assert {(r["event_date"], r["property_value"]) for r in geo} == {
        (D1, "US"),
        (D1, "CN"),
        (D2, "US"),
        (D3, "US"),
        (D4, "CN"),
    }


@pytest.mark.parametrize("engine", ENGINES)
def test_user_attributes(wh, engine):
    rows = wh.rows(engine, metadata.USER_ATTRIBUTE_METADATA)
    got = {(r["event_date"], r["category"], r["property_name"], r["property_value"]): r["value_count"] for r in rows}
    # each user counts on the day they were last seen: C on D2, A on D3, B on D4
    assert got == {
        (D2, "user", "level", "silver"): 1,
        (D2, "user_outer", "first_traffic_source", "newsletter"): 1,
        (D2, "user_outer", "first_traffic_medium", "email"): 1,
        (D2, "user_outer", "first_traffic_channel_group", "Email"): 1,
        (D3, "user", "level", "gold"): 1,
        (D3, "user_outer", "first_traffic_source", "google"): 1,
        (D3, "user_outer", "first_traffic_medium", "cpc"): 1,
        (D3, "user_outer", "first_traffic_channel_group", "Paid Search"): 1,
        (D4, "user_outer", "first_app_install_source", "Google Play"): 1,
    }


def test_top_n_limits_values(pg_cluster, tmp_path):
    wh = build(pg_cluster, tmp_path, "metadata_top1")
    reporting.scan_metadata(wh.pg, "postgres", wh.target, D1, D4, top_n=1)
    reporting.create_objects(wh.duck, "duckdb", wh.target, top_n=1)  # a DuckDB view fixes N when created
    where = '"event_date" = :d AND "event_name" = \'click\' AND "property_name" = \'button\''
    for engine in ENGINES:
        rows = wh.rows(engine, metadata.EVENT_PARAMETER_METADATA, where, {"d": D1})
        assert [(r["property_value"], r["value_count"], r["property_count"]) for r in rows] == [("buy", 2, 3)]


def test_scan_replaces_its_days(pg_cluster, tmp_path):
    wh = build(pg_cluster, tmp_path, "metadata_rescan")
    pg, target = wh.pg, wh.target
    assert reporting.scan_metadata(pg, "postgres", target, days=1, end=D2) == (D1, D2)
    pg.execute(f'DELETE FROM "{target.schema}"."event_v2" WHERE "event_name" = \'click\'')
    reporting.scan_metadata(pg, "postgres", target, D1, D1)
    names = {(r["event_date"], r["event_name"]) for r in wh.rows("postgres", metadata.EVENT_METADATA)}
    assert (D1, "click") not in names and (D2, "click") in names  # D2 was not scanned again
