"""The jars Spark needs for `s3a://` (and `s3://`, mapped onto S3A): hadoop-aws plus the AWS SDK v2 modules.

    python -m scripts.spark_jars fetch [--verbose]   download them (a second run only checks); prints the folder
    python -m scripts.spark_jars list                the jars in the folder and their total size

The pyspark wheel ships Hadoop as the shaded `hadoop-client-api`/`hadoop-client-runtime` jars but no S3A connector.
hadoop-aws must be of exactly that Hadoop version (a mismatch fails at start-up with NumberFormatException "60s"),
so the version is read from the wheel's jar names, never pinned here.

hadoop-aws declares the whole AWS SDK v2 `bundle` (~600 MB, everything shaded in). S3A only calls S3 and STS (and
the transfer manager for copies), so the bundle is excluded and the `s3`, `sts` and `s3-transfer-manager` modules
are fetched instead, at the SDK version that Hadoop release was built and tested with: the generated pom inherits
`org.apache.hadoop:hadoop-project:<version>`, whose `aws-java-sdk-v2.version` property names it, and imports the
SDK's BOM at that version. Third-party jars that the pyspark wheel already carries (Netty, Apache HttpClient,
commons-codec, SLF4J; commons-logging is covered by Spark's jcl-over-slf4j) are left out: two versions of one
library on a classpath is a lottery. Maven (`mvn dependency:copy-dependencies`) fetches from Maven Central into
`${CLICKSTREAM_SPARK_JARS:-~/.cache/clickstream/spark-jars}`, the folder `clickstream_etl.spark.build_session`
adds to `spark.jars`.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

from clickstream_etl.spark import DEFAULT_JARS_DIR, JARS_DIR_ENV

from scripts.maven import copy_dependencies

STAMP = ".complete"
SDK_MODULES = ("s3", "sts", "s3-transfer-manager")
# Groups whose jars the pyspark wheel already ships (see the module docstring).
PROVIDED_GROUPS = ("io.netty", "org.apache.httpcomponents", "commons-codec", "commons-logging", "org.slf4j")
_HADOOP_API = re.compile(r"^hadoop-client-api-(\d[\w.\-]*)\.jar$")
# An artifact's name is what precedes the first "-<digit>" in a Maven jar name (version, then any classifier).
_ARTIFACT = re.compile(r"^(.+?)-\d")


def jars_dir() -> Path:
    return Path(os.environ.get(JARS_DIR_ENV) or DEFAULT_JARS_DIR).expanduser()


def pyspark_jars_dir() -> Path:
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pyspark is not installed in this environment (uv sync first)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "jars"
    if not folder.is_dir():
        raise RuntimeError(f"pyspark has no jars folder at {folder}")
    return folder


def hadoop_version(pyspark_jars: Path | None = None) -> str:
    """The Hadoop version of the pyspark wheel, from its hadoop-client-api jar's name."""
    folder = pyspark_jars or pyspark_jars_dir()
    versions = sorted({m[1] for p in folder.glob("hadoop-client-api-*.jar") if (m := _HADOOP_API.match(p.name))})
    if len(versions) != 1:
        raise RuntimeError(f"expected one hadoop-client-api jar in {folder}, found versions {versions}")
    return versions[0]


def artifact_name(jar_name: str) -> str:
    match = _ARTIFACT.match(jar_name)
    return match[1] if match else jar_name.removesuffix(".jar")


def pom(hadoop: str) -> str:
    sdk_deps = "\n    ".join(
        f"<dependency><groupId>software.amazon.awssdk</groupId><artifactId>{name}</artifactId></dependency>"
        for name in SDK_MODULES
    )
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <!-- Inherited only for the aws-java-sdk-v2.version property: the SDK that this Hadoop release was tested with. -->
  <parent>
    <groupId>org.apache.hadoop</groupId>
    <artifactId>hadoop-project</artifactId>
    <version>{hadoop}</version>
    <relativePath/>
  </parent>
  <groupId>local.clickstream</groupId>
  <artifactId>spark-s3a-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencyManagement>
    <dependencies>
      <dependency>
        <groupId>software.amazon.awssdk</groupId>
        <artifactId>bom</artifactId>
        <version>${{aws-java-sdk-v2.version}}</version>
        <type>pom</type>
        <scope>import</scope>
      </dependency>
    </dependencies>
  </dependencyManagement>
  <dependencies>
    <dependency>
      <groupId>org.apache.hadoop</groupId>
      <artifactId>hadoop-aws</artifactId>
      <version>{hadoop}</version>
      <exclusions>
        <exclusion><groupId>software.amazon.awssdk</groupId><artifactId>bundle</artifactId></exclusion>
      </exclusions>
    </dependency>
    {sdk_deps}
  </dependencies>
</project>
"""


def _stamp_text(hadoop: str, jars: list[str]) -> str:
    return f"hadoop {hadoop}\n" + "".join(f"{name}\n" for name in jars)


def _complete(folder: Path, hadoop: str) -> bool:
    """The folder holds every jar of a finished fetch for this Hadoop version (a pyspark upgrade refetches)."""
    stamp = folder / STAMP
    if not stamp.is_file():
        return False
    lines = stamp.read_text().split("\n")
    names = [line for line in lines[1:] if line]
    return lines[0] == f"hadoop {hadoop}" and bool(names) and all((folder / name).is_file() for name in names)


def ensure_jars(quiet: bool = True) -> Path:
    """The folder of the S3A jars for pyspark's Hadoop (fetched once with Maven; later calls only check)."""
    folder = jars_dir()
    pyspark_jars = pyspark_jars_dir()
    hadoop = hadoop_version(pyspark_jars)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a test run and setup.sh fetching at once wait for each other
        if not _complete(folder, hadoop):
            _fetch(hadoop, folder, pyspark_jars, quiet)
    return folder


def _fetch(hadoop: str, folder: Path, pyspark_jars: Path, quiet: bool) -> None:
    staging = folder.with_name(folder.name + ".partial")
    jars = copy_dependencies(
        pom(hadoop),
        staging,
        quiet,
        f"org.apache.hadoop:hadoop-aws:{hadoop} and the AWS SDK",
        ("-DexcludeGroupIds=" + ",".join(PROVIDED_GROUPS),),
    )
    check_jars(jars, hadoop, sorted(p.name for p in pyspark_jars.glob("*.jar")))
    (staging / STAMP).write_text(_stamp_text(hadoop, jars))  # stamp last: a half-done fetch is never "complete"
    shutil.rmtree(folder, ignore_errors=True)
    staging.replace(folder)


def check_jars(jars: list[str], hadoop: str, pyspark_jars: list[str]) -> None:
    """Fail on a fetch that lacks S3A's pieces or that would put a second copy of a pyspark library on the path."""
    names = {artifact_name(jar) for jar in jars}
    missing = [name for name in ("hadoop-aws", *SDK_MODULES) if name not in names]
    if missing or f"hadoop-aws-{hadoop}.jar" not in jars:
        raise RuntimeError(f"S3A jars incomplete after mvn: missing {missing or [f'hadoop-aws-{hadoop}.jar']}")
    if "bundle" in names:
        raise RuntimeError("the AWS SDK bundle was fetched although it is excluded")
    spark_names = {artifact_name(jar) for jar in pyspark_jars}
    duplicates = sorted(jar for jar in jars if artifact_name(jar) in spark_names)
    if duplicates:
        raise RuntimeError(f"these jars duplicate libraries the pyspark wheel ships: {duplicates}")


def _list(folder: Path) -> int:
    jars = sorted(folder.glob("*.jar"))
    if not jars:
        print(f"no jars in {folder}: run `python -m scripts.spark_jars fetch`", file=sys.stderr)
        return 1
    total = 0
    for jar in jars:
        size = jar.stat().st_size
        total += size
        print(f"{size / 1024:10.0f} KiB  {jar.name}")
    print(f"{total / 1024 / 1024:10.1f} MiB  {len(jars)} jars in {folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.spark_jars")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download hadoop-aws and the AWS SDK v2 modules into the cache (idempotent)")
    fetch.add_argument("--verbose", action="store_true", help="show Maven's output")
    sub.add_parser("list", help="the jars in the cache folder and their total size")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        print(ensure_jars(quiet=not args.verbose))
        return 0
    return _list(jars_dir())


if __name__ == "__main__":
    sys.exit(main())
