"""Fetch jars from Maven Central: `mvn dependency:copy-dependencies` on a generated pom.

Used by scripts/kafka.py (the broker) and scripts/spark_jars.py (S3A for Spark). The jars go to a
staging folder; the caller checks them, writes its stamp and moves the folder into place.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def copy_dependencies(
    pom_text: str, staging: Path, quiet: bool, what: str, extra_args: tuple[str, ...] = ()
) -> list[str]:
    """Resolve the pom's runtime dependencies into `staging` (emptied first); the jar names."""
    if shutil.which("mvn") is None:
        raise RuntimeError(f"Maven (mvn) is needed to fetch {what} from Maven Central")
    shutil.rmtree(staging, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="clickstream-pom-") as workdir:
        (Path(workdir) / "pom.xml").write_text(pom_text)
        command = [
            "mvn",
            "-B",
            *(["-q"] if quiet else []),
            "-f",
            str(Path(workdir) / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
            *extra_args,
        ]
        print(f"fetching {what} into {staging.parent}", file=sys.stderr)
        done = subprocess.run(command, cwd=workdir, capture_output=quiet, text=True, check=False)
        if done.returncode != 0:
            detail = (done.stdout or "")[-4000:] if quiet else ""
            raise RuntimeError(f"mvn dependency:copy-dependencies failed ({done.returncode}):\n{detail}")
    return sorted(p.name for p in staging.glob("*.jar"))
