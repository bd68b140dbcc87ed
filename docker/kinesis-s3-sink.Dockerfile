# kinesis-s3-sink: lands a Kinesis stream (or a Kafka topic) of raw records in S3. Build from the
# repository root:
#   docker build -f docker/kinesis-s3-sink.Dockerfile -t clickstream/kinesis-s3-sink .
# Stateless: checkpoints live in DynamoDB (Kinesis) or in the consumer group (Kafka), so any
# number of tasks can run side by side.

FROM python:3.11-slim-bookworm AS build
COPY --from=ghcr.io/astral-sh/uv:0.9.5 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON_DOWNLOADS=never
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY libs/ libs/
COPY services/ services/
RUN uv sync --frozen --no-dev --no-editable --package kinesis-s3-sink

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin clickstream
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SINK_HTTP_HOST=0.0.0.0 \
    SINK_HTTP_PORT=8687 \
    DRAIN_DEADLINE_S=100
USER 10001
EXPOSE 8687
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8687/health', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["kinesis-s3-sink"]
