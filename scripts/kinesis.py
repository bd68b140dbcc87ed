"""Local Kinesis (kinesalite) and DynamoDB (dynalite) emulators on 127.0.0.1, started as one node process.

    python -m scripts.kinesis fetch                                  npm ci of tools/emulators (idempotent)
    python -m scripts.kinesis run [--kinesis-port 4567] [--dynamodb-port 4568] [--data-dir DIR]
                                                                     foreground; Ctrl-C or SIGTERM stops

The emulators are npm packages pinned in tools/emulators/package-lock.json and launched by
tools/emulators/serve.js through their JavaScript APIs (kinesalite's command line binds every
interface). Streams and tables leave CREATING/UPDATING after 50 ms. Without a data dir the data lives
in memory and is gone when the process stops. Any credentials and region us-east-1 work; tests use
`Emulators` directly (see tests/fixtures_kinesis.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.stack import free_port, kill, terminate

ROOT = Path(__file__).resolve().parent.parent
EMULATORS_DIR = ROOT / "tools" / "emulators"
REGION = "us-east-1"
DUMMY_KEY_ID = "test"
DUMMY_SECRET = "test"  # noqa: S105 - the emulators accept any credentials


def installed() -> bool:
    """True when tools/emulators/node_modules matches package-lock.json (setup.sh has run since it changed)."""
    return (EMULATORS_DIR / "node_modules" / ".setup-stamp").is_file() and (
        EMULATORS_DIR / "node_modules" / "kinesalite"
    ).is_dir()


def fetch(quiet: bool = False) -> None:
    """npm ci of the pinned emulators (idempotent: a no-op when they are up to date)."""
    out = subprocess.DEVNULL if quiet else None
    subprocess.run(["bash", str(EMULATORS_DIR / "setup.sh")], check=True, stdout=out)


def aws_env(kinesis_endpoint: str | None, dynamodb_endpoint: str | None) -> dict[str, str]:
    """The environment a service (botocore/aiobotocore) needs to use the emulators instead of AWS.

    botocore reads the service-specific `AWS_ENDPOINT_URL_<SERVICE>` variables (and the configured
    endpoint wins over the regional one) unless `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` is true. It reads
    the region from `AWS_DEFAULT_REGION` only, not `AWS_REGION` (the other SDKs' name): both are set.
    """
    env = {
        "AWS_ACCESS_KEY_ID": DUMMY_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    if kinesis_endpoint:
        env["AWS_ENDPOINT_URL_KINESIS"] = kinesis_endpoint
    if dynamodb_endpoint:
        env["AWS_ENDPOINT_URL_DYNAMODB"] = dynamodb_endpoint
    return env


def client(service: str, endpoint: str, **config: Any):
    """A synchronous botocore client for one emulator (dummy credentials, us-east-1)."""
    import botocore.config
    import botocore.session

    settings = {"retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 2, "read_timeout": 30}
    settings.update(config)
    return botocore.session.get_session().create_client(
        service,
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=DUMMY_KEY_ID,
        aws_secret_access_key=DUMMY_SECRET,
        config=botocore.config.Config(**settings),
    )


@dataclass
class Emulators:
    """kinesalite + dynalite in one node process on 127.0.0.1 (tools/emulators/serve.js)."""

    kinesis_port: int = 4567
    dynamodb_port: int = 4568
    data_dir: Path | None = None  # LevelDB stores under data_dir/kinesis and data_dir/dynamodb; None: in memory
    log_path: Path | None = None
    state_ms: int = 50  # how long streams/tables stay CREATING, UPDATING, DELETING
    shard_limit: int = 1000  # account-wide open shard limit (kinesalite's default is 10)
    new_session: bool = False  # own process group: a terminal's Ctrl-C reaches only us, and we stop it
    proc: subprocess.Popen | None = None
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def isolated(cls, log_path: Path | None = None, **overrides) -> Emulators:
        """Emulators on free ports (what tests want), in memory unless `data_dir` is given."""
        settings = {"kinesis_port": free_port(), "dynamodb_port": free_port(), "log_path": log_path}
        settings.update(overrides)
        return cls(**settings)

    @property
    def kinesis_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.kinesis_port}"

    @property
    def dynamodb_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.dynamodb_port}"

    def env(self) -> dict[str, str]:
        """AWS_* variables that point botocore/aiobotocore in a child process at these emulators."""
        return aws_env(self.kinesis_endpoint, self.dynamodb_endpoint)

    @property
    def kinesis(self):
        """A shared synchronous botocore Kinesis client (for set-up and assertions in tests)."""
        if "kinesis" not in self._clients:
            self._clients["kinesis"] = client("kinesis", self.kinesis_endpoint)
        return self._clients["kinesis"]

    @property
    def dynamodb(self):
        if "dynamodb" not in self._clients:
            self._clients["dynamodb"] = client("dynamodb", self.dynamodb_endpoint)
        return self._clients["dynamodb"]

    def command(self) -> list[str]:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node (>= 20) is not on PATH; the Kinesis/DynamoDB emulators need it")
        cmd = [
            node,
            str(EMULATORS_DIR / "serve.js"),
            "--kinesis-port",
            str(self.kinesis_port),
            "--dynamodb-port",
            str(self.dynamodb_port),
            "--state-ms",
            str(self.state_ms),
            "--shard-limit",
            str(self.shard_limit),
        ]
        if self.data_dir is not None:
            cmd += ["--kinesis-path", str(Path(self.data_dir) / "kinesis")]
            cmd += ["--dynamodb-path", str(Path(self.data_dir) / "dynamodb")]
        return cmd

    def start(self, timeout_s: float = 30) -> Emulators:
        if not installed():
            raise RuntimeError("the emulators are not installed: run `python -m scripts.kinesis fetch`")
        if self.data_dir is not None:
            Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        if self.log_path is not None:
            Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "ab")  # handed to the child process, closed below
        else:
            out = subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=self.new_session,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout_s: float = 30) -> None:
        """Until both answer a real API call (ListStreams, ListTables), or the process exits."""
        probes = {
            "kinesis": (client("kinesis", self.kinesis_endpoint, retries={"max_attempts": 1}), "list_streams"),
            "dynamodb": (client("dynamodb", self.dynamodb_endpoint, retries={"max_attempts": 1}), "list_tables"),
        }
        end = time.monotonic() + timeout_s
        last: Exception | None = None
        while probes:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"the emulators exited with {self.proc.returncode} while starting (log: {self.log_path})"
                )
            for name, (probe, operation) in list(probes.items()):
                try:
                    getattr(probe, operation)()
                    probes.pop(name)
                except Exception as exc:  # connection refused until the server listens
                    last = exc
            if not probes:
                return
            if time.monotonic() > end:
                raise TimeoutError(f"{', '.join(probes)} not ready after {timeout_s}s ({last})")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 10) -> int | None:
        return terminate(self.proc, timeout_s)

    def kill(self) -> None:
        kill(self.proc)

    def __enter__(self) -> Emulators:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()

    # --- set-up helpers -------------------------------------------------------------------------

    def create_stream(self, name: str, shards: int = 1, timeout_s: float = 10) -> dict:
        """Create a stream and wait until it is ACTIVE; returns its DescribeStreamSummary."""
        self.kinesis.create_stream(StreamName=name, ShardCount=shards)
        return self.wait_stream_active(name, timeout_s)

    def wait_stream_active(self, name: str, timeout_s: float = 10) -> dict:
        """Until the stream is ACTIVE (after create, split or merge). botocore's stream_exists waiter polls
        every 10 s; this polls every 20 ms."""
        end = time.monotonic() + timeout_s
        while True:
            summary = self.kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
            if summary["StreamStatus"] == "ACTIVE":
                return summary
            if time.monotonic() > end:
                raise TimeoutError(f"stream {name} still {summary['StreamStatus']} after {timeout_s}s")
            time.sleep(0.02)

    def open_shards(self, name: str) -> list[dict]:
        shards = self.kinesis.list_shards(StreamName=name)["Shards"]
        return [s for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"]]

    def split_all_shards(self, name: str, timeout_s: float = 10) -> list[dict]:
        """Split every open shard at the middle of its hash range, one SplitShard at a time: what
        UpdateShardCount(UNIFORM_SCALING) to twice the count does on AWS (kinesalite has no
        UpdateShardCount). Returns the open shards afterwards."""
        for shard in self.open_shards(name):
            low = int(shard["HashKeyRange"]["StartingHashKey"])
            high = int(shard["HashKeyRange"]["EndingHashKey"])
            self.kinesis.split_shard(
                StreamName=name, ShardToSplit=shard["ShardId"], NewStartingHashKey=str((low + high + 1) // 2)
            )
            self.wait_stream_active(name, timeout_s)
        return self.open_shards(name)

    def create_table(
        self,
        name: str,
        hash_key: str = "id",
        hash_type: str = "S",
        range_key: str | None = None,
        range_type: str = "S",
        timeout_s: float = 10,
        **extra: Any,
    ) -> dict:
        """Create a PAY_PER_REQUEST table and wait with the `table_exists` waiter; returns DescribeTable's Table."""
        keys = [{"AttributeName": hash_key, "KeyType": "HASH"}]
        attributes = [{"AttributeName": hash_key, "AttributeType": hash_type}]
        if range_key is not None:
            keys.append({"AttributeName": range_key, "KeyType": "RANGE"})
            attributes.append({"AttributeName": range_key, "AttributeType": range_type})
        self.dynamodb.create_table(
            TableName=name,
            KeySchema=keys,
            AttributeDefinitions=attributes,
            BillingMode="PAY_PER_REQUEST",
            **extra,
        )
        attempts = max(1, int(timeout_s / 0.05))
        self.dynamodb.get_waiter("table_exists").wait(
            TableName=name, WaiterConfig={"Delay": 0.05, "MaxAttempts": attempts}
        )
        return self.dynamodb.describe_table(TableName=name)["Table"]


def run(args: argparse.Namespace) -> int:
    emulators = Emulators(
        kinesis_port=args.kinesis_port,
        dynamodb_port=args.dynamodb_port,
        data_dir=Path(args.data_dir).resolve() if args.data_dir else None,
        log_path=Path(args.log).resolve() if args.log else None,
        new_session=True,
    )
    stopping = False

    def on_signal(_signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if not installed():
        fetch()
    started = time.monotonic()
    emulators.start()
    where = f"LevelDB under {emulators.data_dir}" if emulators.data_dir else "in memory"
    print(
        f"emulators are up in {time.monotonic() - started:.1f} s ({where})\n"
        f"  kinesis:  {emulators.kinesis_endpoint}  (kinesalite)\n"
        f"  dynamodb: {emulators.dynamodb_endpoint}  (dynalite)\n"
        f"  env:      {' '.join(f'{k}={v}' for k, v in emulators.env().items())}\n"
        f"Ctrl-C stops.",
        flush=True,
    )
    code = 0
    while not stopping:
        time.sleep(0.2)
        if emulators.proc is not None and emulators.proc.poll() is not None:
            print(f"the emulators exited with {emulators.proc.returncode}", file=sys.stderr)
            code = 1
            break
    emulators.stop()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.kinesis")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="npm ci of the pinned kinesalite and dynalite (idempotent)")
    run_parser = sub.add_parser("run", help="run kinesalite and dynalite on 127.0.0.1 in the foreground")
    run_parser.add_argument("--kinesis-port", type=int, default=int(os.environ.get("KINESIS_PORT", "4567")))
    run_parser.add_argument("--dynamodb-port", type=int, default=int(os.environ.get("DYNAMODB_PORT", "4568")))
    run_parser.add_argument("--data-dir", default=None, help="keep the data in LevelDB stores here (default: memory)")
    run_parser.add_argument("--log", default=None, help="append the emulators' output to this file")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        fetch()
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
