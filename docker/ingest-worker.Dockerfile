# ingest-worker: makes what the proxy hands over durable (WAL + sink). Build from the repository root:
#   docker build -f docker/ingest-worker.Dockerfile -t clickstream/ingest-worker .
# Mount a persistent volume (EFS on Fargate) at /var/lib/clickstream/wal: the task disk dies
# with the task, and acknowledged records wait there until uploaded.

FROM python:3.11-slim-bookworm AS build
COPY --from=ghcr.io/astral-sh/uv:0.9.5 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON_DOWNLOADS=never
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY libs/ libs/
COPY services/ services/
RUN uv sync --frozen --no-dev --no-editable --package ingest-worker

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin clickstream \
    && install -d -o 10001 -g 10001 /var/run/clickstream /var/lib/clickstream/wal
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HANDOFF_ADDRESS=unix:/var/run/clickstream/handoff.sock \
    WORKER_HTTP_HOST=0.0.0.0 \
    WORKER_HTTP_PORT=8686 \
    WAL_DIR=/var/lib/clickstream/wal \
    DRAIN_DEADLINE_S=100
USER 10001
VOLUME ["/var/lib/clickstream/wal"]
EXPOSE 8686
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8686/health', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["ingest-worker"]
