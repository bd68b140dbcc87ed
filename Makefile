# clickstream: the local pipeline, its tests and benchmarks. `make help` lists the targets.
SHELL := /bin/bash
export PATH := $(HOME)/.local/bin:$(PATH)
PORT ?= 8080
DATA_DIR ?= ./data
WAREHOUSE ?= duckdb
export PORT DATA_DIR

.PHONY: help setup setup-test up demo test test-fast lint fmt bench bench-stream bench-etl bench-load bench-freshness etl package-etl clean

help:
	@echo "make demo       the whole pipeline (ingest, ETL, loader, DuckDB reports) fed realistic SDK traffic"
	@echo "make up         run the local stack and the pipeline in the foreground (Ctrl-C drains and stops);"
	@echo "                SINK=kafka or SINK=kinesis buffers through a real Kafka broker or the Kinesis emulator"
	@echo "                WAREHOUSE=postgres (up and demo) loads into a PostgreSQL cluster under DATA_DIR/postgres"
	@echo "make test       every test, with the real components (Chromium, S3 API server)"
	@echo "make lint       ruff + hadolint"
	@echo "make bench      HTTP ingestion benchmark against nginx on the same box"
	@echo "make bench-stream  worker -> Kafka/Kinesis against their own ceilings, kinesis-s3-sink records/s"
	@echo "make etl        one ETL run over ./data (SOURCE/SINK override): raw records -> the four tables"
	@echo "make bench-etl  the ETL job on 2M generated events against its I/O floor (read + Parquet writes)"
	@echo "make bench-load PostgreSQL loader rows/s on 1M generated events against a raw binary COPY of the same rows"
	@echo "make bench-freshness  event sent -> visible in the warehouse, p50/p95, with the 30 s schedule"
	@echo "make package-etl   the ETL job's Python environment archive + entry point for EMR Serverless (dist/etl)"

setup:
	@bash scripts/setup.sh run

setup-test:
	@bash scripts/setup.sh test

SINK ?= s3
export SINK

up: setup
	@if [ "$(SINK)" = kafka ]; then bash scripts/setup.sh kafka; fi
	@if [ "$(SINK)" = kinesis ]; then bash scripts/setup.sh emulators; fi
	@if [ "$(WAREHOUSE)" = postgres ]; then bash scripts/setup.sh postgres; fi
	uv run python -m scripts.stack up --port $(PORT) --data-dir $(DATA_DIR) --sink $(SINK) --warehouse $(WAREHOUSE)

demo: setup
	@if [ "$(WAREHOUSE)" = postgres ]; then bash scripts/setup.sh postgres; fi
	uv run python -m scripts.demo --port $(PORT) --data-dir $(DATA_DIR) --warehouse $(WAREHOUSE)

test: setup-test
	uv run pytest -q

test-fast: setup
	uv run pytest -q -m "not slow and not browser"

lint: setup
	uv run ruff check .
	uv run ruff format --check .
	uv run hadolint docker/*.Dockerfile
	uv run python -m scripts.config_docs --check

fmt: setup
	uv run ruff format .
	uv run ruff check --fix .

bench: setup
	@bash scripts/setup.sh bench
	uv run python -m scripts.bench_http

bench-stream: setup
	@bash scripts/setup.sh bench
	@bash scripts/setup.sh kafka
	@bash scripts/setup.sh emulators
	uv run python -m scripts.bench_stream

ETL_SOURCE ?= $(DATA_DIR)/lake/clickstream/default/data/buffer
ETL_SINK ?= $(DATA_DIR)/lake/clickstream/default/data/ods

etl: setup
	@bash scripts/setup.sh etl
	uv run clickstream-etl run --source $(ETL_SOURCE) --sink $(ETL_SINK)

bench-etl: setup
	@bash scripts/setup.sh etl
	uv run python -m scripts.geoip fetch >/dev/null
	uv run python -m scripts.bench_etl

bench-load: setup
	@bash scripts/setup.sh postgres
	uv run python -m scripts.bench_load

bench-freshness: setup
	uv run python -m scripts.bench_freshness

package-etl: setup
	uv run python -m scripts.package_etl

clean:
	rm -rf $(DATA_DIR) .pytest_cache .ruff_cache
