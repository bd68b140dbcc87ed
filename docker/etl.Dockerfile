# etl: the PySpark job in local mode (one JVM, all the container's cores), for runs outside EMR. Build from the
# repository root:
#   docker build -f docker/etl.Dockerfile -t clickstream/etl .
#   docker run --rm -e ETL_SOURCE_URI=s3://raw-bucket/prefix -e ETL_SINK_URI=s3://ods-bucket/ods clickstream/etl run
# s3:// and s3a:// go through Hadoop's S3A connector; its jars (hadoop-aws of pyspark's Hadoop version and the
# AWS SDK v2 modules) are fetched from Maven Central at build time. AWS_ENDPOINT_URL_S3 points it at another S3 API.

FROM python:3.11-slim-bookworm AS build
COPY --from=ghcr.io/astral-sh/uv:0.9.5 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON_DOWNLOADS=never
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY libs/ libs/
COPY services/ services/
RUN uv sync --frozen --no-dev --no-editable --package clickstream-etl

# Maven and a JDK only live in this stage: the runtime image gets the jars, not the tools that fetched them.
FROM build AS jars
# Debian's security updates replace package versions within days; the base image's tag pins the release. The slim
# image has no man folders, and the JRE's post-install links its man pages into them.
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends maven openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*
COPY scripts/spark_jars.py /src/scripts/spark_jars.py
RUN CLICKSTREAM_SPARK_JARS=/opt/spark-jars /opt/venv/bin/python /src/scripts/spark_jars.py fetch

FROM python:3.11-slim-bookworm
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin clickstream \
    && install -d -o 10001 -g 10001 /tmp/spark /var/lib/clickstream
COPY --from=build /opt/venv /opt/venv
COPY --from=jars /opt/spark-jars /opt/spark-jars
# Spark's scratch space (shuffle, spills) goes to /tmp/spark: mount a volume there for large windows.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYSPARK_PYTHON=/opt/venv/bin/python \
    CLICKSTREAM_SPARK_JARS=/opt/spark-jars \
    SPARK_LOCAL_DIRS=/tmp/spark
# Spark creates spark-warehouse and similar in the working directory.
WORKDIR /var/lib/clickstream
USER 10001
STOPSIGNAL SIGTERM
ENTRYPOINT ["clickstream-etl"]
CMD ["run"]
