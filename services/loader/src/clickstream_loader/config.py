"""The loader's configuration: environment variables (ECS-friendly), overridable by CLI flags, validated at start."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlparse

from clickstream_core.settings import env, one_of

ENGINES = ("duckdb", "postgres", "redshift")


def _is_s3(uri: str) -> bool:
    return urlparse(uri).scheme in ("s3", "s3a")


def local_path(uri: str) -> str:
    """A local folder's path from `file:///path` or a plain path."""
    parsed = urlparse(uri)
    return parsed.path if parsed.scheme == "file" else uri


@dataclass(frozen=True)
class LoaderConfig:
    engine: str = env(
        "LOADER_ENGINE",
        "duckdb",
        "Warehouse: duckdb (embedded views over the Parquet, no server), postgres, redshift (not yet)",
        one_of(*ENGINES),
    )
    source: str = env(
        "LOADER_SOURCE_URI", "", "Root of the ETL's four tables (the ETL's ETL_SINK_URI): s3://bucket/prefix or a path"
    )
    app_config: str = env("APP_CONFIG", "", "App configuration YAML (project id, registered apps); empty = any app")
    postgres_dsn: str = env(
        "LOADER_POSTGRES_DSN",
        "",
        "libpq connection string of the warehouse (postgres engine); keep the password in PGPASSWORD or ~/.pgpass",
    )
    state_dir: str = env(
        "LOADER_STATE_DIR",
        "",
        "Local folder of the duckdb engine's file states and view definitions; default <source>/_loader",
    )
    max_files: int = env("LOADER_MAX_FILES_PER_LOAD", 50, "Most files in one load (one manifest, one transaction)")
    file_suffix: str = env("LOADER_FILE_SUFFIX", ".snappy.parquet", "Only objects whose key ends with this are loaded")
    retention_days: int = env(
        "LOADER_RETENTION_DAYS",
        365,
        "Rows whose event_timestamp is older than this many days before the newest one are deleted (0 = keep all)",
    )
    retention_delete_files: bool = env(
        "LOADER_RETENTION_DELETE_FILES",
        False,
        "duckdb engine: also delete Parquet day partitions older than the retention (off: the views keep them)",
    )
    lock_timeout_s: float = env(
        "LOADER_LOCK_TIMEOUT_S", 30.0, "Wait at most this long for a warehouse lock before failing the run"
    )

    reporting: bool = env(
        "LOADER_REPORTING",
        True,
        "postgres: after a pass that loaded an app's rows, create its reporting objects (when missing or changed) "
        "and refresh the touched days; duckdb: publish the reporting views with the app's views",
    )
    refresh_days: int = env(
        "LOADER_REFRESH_DAYS", 1, "Reporting refresh window: this many days before today plus today (app time zone)"
    )
    metadata_interval_s: float = env(
        "LOADER_METADATA_INTERVAL_S",
        3600.0,
        "Run an app's metadata scan at most this often (seconds; 0 = every pass that loaded it; the reference: daily)",
    )

    def problems(self):
        if not self.source:
            yield "LOADER_SOURCE_URI (--source) is required"
        elif urlparse(self.source).scheme not in ("", "file", "s3", "s3a"):
            yield f"LOADER_SOURCE_URI {self.source!r}: use s3://bucket/prefix, file:///path or a path"
        elif _is_s3(self.source) and not urlparse(self.source).netloc:
            yield f"LOADER_SOURCE_URI {self.source!r} has no bucket"
        if self.engine == "postgres" and not self.postgres_dsn:
            yield "LOADER_POSTGRES_DSN (--postgres-dsn) is required with LOADER_ENGINE=postgres"
        if self.engine == "redshift":
            yield "LOADER_ENGINE=redshift is not implemented yet (Redshift Data API path): use postgres or duckdb"
        if self.engine == "duckdb" and self.source and _is_s3(self.source):
            yield (
                "LOADER_ENGINE=duckdb reads a local folder only (DuckDB's httpfs extension cannot be installed "
                "offline): sync the tables to a folder or use LOADER_ENGINE=postgres"
            )
        if self.engine == "duckdb" and not self.state_dir and self.source and _is_s3(self.source):
            yield "LOADER_STATE_DIR is required when LOADER_SOURCE_URI is on S3"
        if self.max_files < 1:
            yield "LOADER_MAX_FILES_PER_LOAD must be at least 1"
        if self.retention_days < 0:
            yield "LOADER_RETENTION_DAYS must not be negative (0 keeps everything)"
        if not self.file_suffix:
            yield "LOADER_FILE_SUFFIX must not be empty"
        if self.refresh_days < 0:
            yield "LOADER_REFRESH_DAYS must not be negative (0 refreshes today only)"
        if self.metadata_interval_s < 0:
            yield "LOADER_METADATA_INTERVAL_S must not be negative"
        if self.lock_timeout_s <= 0:
            yield "LOADER_LOCK_TIMEOUT_S must be positive"

    @property
    def state_path(self) -> str:
        """The local state folder (duckdb engine)."""
        if self.state_dir:
            return local_path(self.state_dir)
        return os.path.join(local_path(self.source), "_loader")
