# loader: one pass of the loader (discover the ETL's new Parquet files, load them exactly once, apply retention),
# then exit 0/1/2. Schedule it (ECS scheduled task, cron, a Kubernetes CronJob) every few minutes, or run the
# scheduler that calls clickstream_loader.runner.run_once in-process. Build from the repository root:
#   docker build -f docker/loader.Dockerfile -t clickstream/loader .
#   docker run --rm -e LOADER_ENGINE=postgres -e LOADER_SOURCE_URI=s3://ods-bucket/ods \
#     -e LOADER_POSTGRES_DSN=postgresql://loader@db:5432/clickstream -e PGPASSWORD=... clickstream/loader
# With the embedded duckdb engine, mount the ETL's output folder and a state folder (LOADER_STATE_DIR), and give
# readers the same mount: they open <state>/warehouse.duckdb read-only or run <state>/views.sql.

FROM python:3.11-slim-bookworm AS build
COPY --from=ghcr.io/astral-sh/uv:0.9.5 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON_DOWNLOADS=never
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY libs/ libs/
COPY services/ services/
RUN uv sync --frozen --no-dev --no-editable --package clickstream-loader

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin clickstream \
    && install -d -o 10001 -g 10001 /var/lib/clickstream
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LOADER_STATE_DIR=/var/lib/clickstream/loader
WORKDIR /var/lib/clickstream
USER 10001
STOPSIGNAL SIGTERM
ENTRYPOINT ["clickstream-loader"]
CMD ["run"]
