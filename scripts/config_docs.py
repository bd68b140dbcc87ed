"""Render docs/configuration.md from the services' config classes (the single source of truth).

python -m scripts.config_docs            # rewrite docs/configuration.md
python -m scripts.config_docs --check    # exit 1 when the file is stale (make lint runs it)
"""

from __future__ import annotations

import sys
from pathlib import Path

from clickstream_core.settings import describe
from clickstream_etl.config import EtlConfig
from clickstream_loader.config import LoaderConfig
from ingest_proxy.config import ProxyConfig
from ingest_worker.config import WorkerConfig
from ingest_worker.sinks.kafka import KafkaSinkConfig
from ingest_worker.sinks.kinesis import KinesisSinkConfig
from ingest_worker.sinks.s3 import S3SinkConfig
from kinesis_s3_sink.config import SinkConfig
from kinesis_s3_sink.sources.kafka import KafkaSourceConfig
from kinesis_s3_sink.sources.kinesis import KinesisSourceConfig

TARGET = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

INTRO = """# Configuration

Every service reads environment variables (ECS-friendly), validates them all at start-up and
exits with status 2 and one line per mistake. This page is generated from the config classes by
`python -m scripts.config_docs`; `make lint` fails when it is stale.

`make up` / `make demo` run in dev mode (`CLICKSTREAM_MODE=dev`): any appId, any Origin echoed,
`fakeIp` honoured. The images default to production mode: `APP_CONFIG` must name an app
configuration with at least one app (see `docs/architecture.md`, "One app configuration"), and
CORS origins must be listed (per app in the app config, or for all apps in `CORS_ALLOWED_ORIGINS`).
`*` is refused in production: the web SDK sends credentialed requests, which browsers only accept
when the Origin is echoed, so `*` would mean "every site may post as your users".
"""

SECTIONS = [
    ("ingest-proxy", ProxyConfig),
    ("ingest-worker", WorkerConfig),
    ("ingest-worker, S3 sink (`SINK=s3`)", S3SinkConfig),
    ("ingest-worker, Kafka sink (`SINK=kafka`)", KafkaSinkConfig),
    ("ingest-worker, Kinesis sink (`SINK=kinesis`)", KinesisSinkConfig),
    ("kinesis-s3-sink", SinkConfig),
    ("kinesis-s3-sink, Kinesis source (`SOURCE=kinesis`)", KinesisSourceConfig),
    ("kinesis-s3-sink, Kafka source (`SOURCE=kafka`)", KafkaSourceConfig),
    ("etl (`clickstream-etl run`; flags override these)", EtlConfig),
    ("loader (`clickstream-loader run`; flags override these)", LoaderConfig),
]


def render() -> str:
    parts = [INTRO]
    for title, cls in SECTIONS:
        parts.append(f"\n## {title}\n\n| variable | default | meaning |\n|---|---|---|")
        for name, default, doc in describe(cls):
            shown = f"`{default}`" if default != "" else "(empty)"
            parts.append(f"| `{name}` | {shown} | {doc} |")
    parts.append(
        "\nThe S3 sink also honours the standard AWS variables (`AWS_REGION`, credentials chain, "
        "`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` for a local S3 API server).\n"
    )
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print("docs/configuration.md is stale: run python -m scripts.config_docs", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
