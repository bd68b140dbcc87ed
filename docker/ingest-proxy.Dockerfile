# ingest-proxy: the SDKs' HTTP endpoint. Build from the repository root:
#   docker build -f docker/ingest-proxy.Dockerfile -t clickstream/ingest-proxy .
# Production defaults: strict mode (APP_CONFIG required), one ALB hop trusted in X-Forwarded-For.

FROM python:3.11-slim-bookworm AS build
COPY --from=ghcr.io/astral-sh/uv:0.9.5 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON_DOWNLOADS=never
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY libs/ libs/
COPY services/ services/
RUN uv sync --frozen --no-dev --no-editable --package ingest-proxy

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin clickstream \
    && install -d -o 10001 -g 10001 /var/run/clickstream
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CLICKSTREAM_MODE=production \
    HOST=0.0.0.0 \
    PORT=8088 \
    TRUSTED_PROXIES=1 \
    HANDOFF_ADDRESS=unix:/var/run/clickstream/handoff.sock \
    PROMETHEUS_MULTIPROC_DIR=/tmp/proxy-metrics
USER 10001
EXPOSE 8088
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8088/health', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["ingest-proxy"]
