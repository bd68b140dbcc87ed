"""The loader's configuration: environment variables (ECS-friendly), overridable by CLI flags, validated at start."""

from __future__ import annotations

import os
import re
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
        "Warehouse: duckdb (embedded views over the Parquet, no server), postgres, redshift (through the Data API)",
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
    connections: int = env(
        "LOADER_CONNECTIONS",
        2,
        "postgres: load this many app/table groups at once, each on its own connection and in its own "
        "transactions (1 = one after the other)",
    )

    reporting: bool = env(
        "LOADER_REPORTING",
        True,
        "postgres, redshift: after a pass that loaded an app's rows, create its reporting objects (when missing or "
        "changed) and refresh the touched days; duckdb: publish the reporting views with the app's views",
    )
    refresh_days: int = env(
        "LOADER_REFRESH_DAYS", 1, "Reporting refresh window: this many days before today plus today (app time zone)"
    )
    metadata_interval_s: float = env(
        "LOADER_METADATA_INTERVAL_S",
        3600.0,
        "Run an app's metadata scan at most this often (seconds; 0 = every pass that loaded it; the reference: daily)",
    )

    # ----------------------------------------------------------------------------- AWS paths (redshift, glue)
    state_table: str = env(
        "LOADER_STATE_TABLE",
        "",
        "DynamoDB status table of the file states (the reference's; created when missing); redshift engine only "
        "(postgres commits its states with the rows, duckdb keeps them next to its views)",
    )
    state_lease_s: float = env(
        "LOADER_STATE_LEASE_S",
        900.0,
        "DynamoDB states: an ENQUEUED claim older than this (seconds) is re-picked (its loader is presumed dead)",
    )
    redshift_workgroup: str = env("LOADER_REDSHIFT_WORKGROUP", "", "Redshift Serverless workgroup (or a cluster id)")
    redshift_cluster_id: str = env(
        "LOADER_REDSHIFT_CLUSTER_ID", "", "Provisioned Redshift cluster identifier (or a serverless workgroup)"
    )
    redshift_database: str = env("LOADER_REDSHIFT_DATABASE", "", "Redshift database (one per project)")
    redshift_secret_arn: str = env(
        "LOADER_REDSHIFT_SECRET_ARN", "", "Secrets Manager ARN of the Data API's credentials (or a db user, or IAM)"
    )
    redshift_db_user: str = env(
        "LOADER_REDSHIFT_DB_USER", "", "Database user for temporary credentials (provisioned cluster only)"
    )
    redshift_iam_role: str = env(
        "LOADER_REDSHIFT_IAM_ROLE", "", "ARN of the IAM role Redshift assumes to COPY from S3 (arn:aws:iam::…:role/…)"
    )
    manifest_prefix: str = env(
        "LOADER_MANIFEST_PREFIX",
        "",
        "s3://bucket/prefix/ where the COPY manifests are written (<prefix><table>/manifest/<app>-<id>.manifest)",
    )
    redshift_timeout_s: float = env(
        "LOADER_REDSHIFT_TIMEOUT_S", 3600.0, "Fail a Data API statement still running after this many seconds"
    )
    redshift_retries: int = env(
        "LOADER_REDSHIFT_RETRIES", 3, "Resubmissions of a batch that failed for a retriable reason (conflict, lock)"
    )
    glue_database: str = env(
        "LOADER_GLUE_DATABASE",
        "",
        "Glue database for Athena: each pass creates it, the four tables, new files' partitions and the named queries "
        "(S3 source)",
    )
    athena_workgroup: str = env(
        "LOADER_ATHENA_WORKGROUP",
        "primary",
        "Athena workgroup (existing) that gets the reference's named queries over LOADER_GLUE_DATABASE",
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
        yield from self._aws_problems()
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
        if not 1 <= self.connections <= 32:
            yield "LOADER_CONNECTIONS must be between 1 and 32"

    def _aws_problems(self):
        if self.state_table and self.engine == "postgres":
            yield (
                "LOADER_STATE_TABLE is not used with LOADER_ENGINE=postgres: its file states commit in the same "
                "transaction as the rows; unset it"
            )
        elif self.state_table and self.engine == "duckdb":
            yield "LOADER_STATE_TABLE is not used with LOADER_ENGINE=duckdb (its states are in the state dir); unset it"
        if self.state_lease_s <= 0:
            yield "LOADER_STATE_LEASE_S must be positive"
        if self.glue_database:
            if not re.fullmatch(r"[a-z0-9_]{1,255}", self.glue_database):
                yield f"LOADER_GLUE_DATABASE {self.glue_database!r}: use lower-case letters, digits and _"
            if self.source and not _is_s3(self.source):
                yield "LOADER_GLUE_DATABASE needs LOADER_SOURCE_URI on S3 (Glue tables point at S3 locations)"
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", self.athena_workgroup):
            yield (
                f"LOADER_ATHENA_WORKGROUP {self.athena_workgroup!r}: an Athena workgroup name is 1-128 letters, "
                "digits, '.', '_' or '-'"
            )
        elif self.athena_workgroup != "primary" and not self.glue_database:
            yield "LOADER_ATHENA_WORKGROUP is used only with LOADER_GLUE_DATABASE (the named queries read its tables)"
        if self.engine != "redshift":
            return
        if self.source and not _is_s3(self.source):
            yield "LOADER_ENGINE=redshift needs LOADER_SOURCE_URI on S3 (Redshift COPYs from S3)"
        if not self.state_table:
            yield "LOADER_STATE_TABLE (a DynamoDB table name) is required with LOADER_ENGINE=redshift"
        if bool(self.redshift_workgroup) == bool(self.redshift_cluster_id):
            yield (
                "LOADER_ENGINE=redshift needs exactly one of LOADER_REDSHIFT_WORKGROUP (serverless) and "
                "LOADER_REDSHIFT_CLUSTER_ID (provisioned)"
            )
        if not self.redshift_database:
            yield "LOADER_REDSHIFT_DATABASE is required with LOADER_ENGINE=redshift"
        if self.redshift_secret_arn and self.redshift_db_user:
            yield "set LOADER_REDSHIFT_SECRET_ARN or LOADER_REDSHIFT_DB_USER, not both"
        if self.redshift_secret_arn and not self.redshift_secret_arn.startswith("arn:"):
            yield f"LOADER_REDSHIFT_SECRET_ARN {self.redshift_secret_arn!r} is not an ARN"
        if self.redshift_db_user and self.redshift_workgroup:
            yield "LOADER_REDSHIFT_DB_USER works with a provisioned cluster only (serverless: a secret ARN or IAM)"
        if not re.fullmatch(r"arn:aws[a-z-]*:iam::\d{12}:role/\S+", self.redshift_iam_role):
            yield "LOADER_REDSHIFT_IAM_ROLE must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)"
        elif "'" in self.redshift_iam_role:
            yield "LOADER_REDSHIFT_IAM_ROLE must not contain a quote"
        prefix = urlparse(self.manifest_prefix)
        if prefix.scheme != "s3" or not prefix.netloc:
            yield "LOADER_MANIFEST_PREFIX must be s3://bucket/prefix/ with LOADER_ENGINE=redshift"
        if self.redshift_timeout_s <= 0:
            yield "LOADER_REDSHIFT_TIMEOUT_S must be positive"
        if self.redshift_retries < 0:
            yield "LOADER_REDSHIFT_RETRIES must not be negative"

    @property
    def state_path(self) -> str:
        """The local state folder (duckdb engine)."""
        if self.state_dir:
            return local_path(self.state_dir)
        return os.path.join(local_path(self.source), "_loader")
