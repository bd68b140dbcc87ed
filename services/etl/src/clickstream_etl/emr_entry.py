"""The file spark-submit runs on EMR Serverless (the job run's `entryPoint`); its arguments go to `clickstream-etl`.

spark-submit takes a Python file, not a console script, and the package itself comes from the environment archive
(`spark.archives=…#environment`, see docs/etl-emr.md); scripts/package_etl.py puts a copy of this file beside it.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # Run straight from the package folder, its modules (config.py, spark.py, …) would shadow top-level names.
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    from clickstream_etl.cli import main

    sys.exit(main())
