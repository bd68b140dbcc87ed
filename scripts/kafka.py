"""A real Apache Kafka broker (KRaft, one combined broker+controller node) as a local process.

    python -m scripts.kafka fetch [--version V]                  download the jars (idempotent)
    python -m scripts.kafka run [--port 9092] [--data-dir DIR]   run a broker in the foreground (Ctrl-C stops)
    python -m scripts.kafka perf --bootstrap H:P --topic T       kafka-producer-perf-test, acks=all

No Debian/npm/PyPI package ships a broker and there is no Docker here, so the official jars come from Maven
Central (`org.apache.kafka:kafka_2.13` and its runtime dependencies, plus `kafka-tools` for
`kafka-producer-perf-test`) through `mvn dependency:copy-dependencies`, into a cache folder outside the repo:
`${CLICKSTREAM_CACHE:-~/.cache/clickstream}/kafka-<version>/libs`. They run on the machine's Java 17,
listening on 127.0.0.1 only.

Version: Kafka 4.4.0, the newest 4.x on Maven Central when this was written. Kafka 4 dropped old protocol
versions (KIP-896), so aiokafka (0.14.0) was checked against this broker before choosing: produce with acks=all,
idempotence on and off, gzip (lz4/snappy/zstd too, with aiokafka's `cramjam` extra), transactions,
auto-created topics, a consumer group with manual commit and resume from the committed offsets after reconnect,
a two-member group rebalance, end/beginning offsets, offsets_for_times, seek, and the admin client
(create/list/describe/delete topics, describe configs, list/describe groups, group offsets). Everything worked, so
there is no need to fall back to the 3.9 line. `kafka-python` is not needed: aiokafka carries its own protocol
code. Override with KAFKA_VERSION (a 3.x broker would need the log4j 1 binding instead: not handled here).

Tests use `KafkaBroker` directly (see tests/fixtures_kafka.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fcntl
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from scripts.maven import copy_dependencies

DEFAULT_VERSION = os.environ.get("KAFKA_VERSION", "4.4.0")
# Kafka 4 logs through SLF4J to log4j2. Its published poms declare slf4j-api 1.7.36 and log4j-core without a
# binding; the binary distribution ships slf4j-api 2 and log4j-slf4j2-impl, and so do we.
LOG4J_VERSION = "2.25.5"
SLF4J_VERSION = "2.0.17"
STAMP = ".complete"


def cache_root() -> Path:
    return Path(os.environ.get("CLICKSTREAM_CACHE") or Path.home() / ".cache" / "clickstream").expanduser()


def kafka_home(version: str = DEFAULT_VERSION) -> Path:
    return cache_root() / f"kafka-{version}"


def _pom(version: str) -> str:
    def dep(group: str, artifact: str, ver: str, exclusions: str = "") -> str:
        return (
            f"<dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
            f"<version>{ver}</version>{exclusions}</dependency>"
        )

    # kafka-tools pulls Kafka Connect's runtime (Jetty, Jersey, ...) for the Connect tools; the broker and
    # ProducerPerformance need none of it.
    no_connect = (
        "<exclusions><exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId>"
        "</exclusion></exclusions>"
    )
    deps = "\n    ".join(
        [
            dep("org.apache.kafka", "kafka_2.13", version),
            dep("org.apache.kafka", "kafka-tools", version, no_connect),
            dep("org.slf4j", "slf4j-api", SLF4J_VERSION),
            dep("org.apache.logging.log4j", "log4j-api", LOG4J_VERSION),
            dep("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
            dep("org.apache.logging.log4j", "log4j-slf4j2-impl", LOG4J_VERSION),
        ]
    )
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.clickstream</groupId>
  <artifactId>kafka-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    {deps}
  </dependencies>
</project>
"""


LOG4J2_BROKER = """\
# Written by scripts/kafka.py: the broker logs to ${sys:kafka.logs.dir}/server.log, not to the console.
status = warn
name = clickstream-kafka
shutdownHook = disable
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""

LOG4J2_TOOLS = """\
# Written by scripts/kafka.py: command-line tools print only warnings (to stderr).
status = warn
name = clickstream-kafka-tools
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
"""


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def ensure_jars(version: str = DEFAULT_VERSION, quiet: bool = True) -> Path:
    """The folder of every jar the broker and kafka-tools need (fetched once with Maven; later calls only check)."""
    home = kafka_home(version)
    libs = home / "libs"
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs fetching at once wait for each other
        if not _complete(libs):
            _fetch(version, libs, quiet)
        config = home / "config"
        config.mkdir(exist_ok=True)
        _write_if_changed(config / "log4j2.properties", LOG4J2_BROKER)
        _write_if_changed(config / "tools-log4j2.properties", LOG4J2_TOOLS)
    return libs


def _complete(libs: Path) -> bool:
    stamp = libs / STAMP
    if not stamp.is_file():
        return False
    names = stamp.read_text().split()
    return bool(names) and all((libs / name).is_file() for name in names)


def _fetch(version: str, libs: Path, quiet: bool) -> None:
    staging = libs.with_name("libs.partial")
    jars = copy_dependencies(_pom(version), staging, quiet, f"org.apache.kafka:kafka_2.13:{version} and kafka-tools")
    must = [f"kafka_2.13-{version}.jar", f"kafka-tools-{version}.jar", f"log4j-slf4j2-impl-{LOG4J_VERSION}.jar"]
    missing = [name for name in must if name not in jars]
    if missing:
        raise RuntimeError(f"Kafka jars incomplete after mvn: missing {missing}")
    # Maven picks slf4j-api 2 (declared here) over Kafka's 1.7.36; two on the classpath would be a lottery.
    slf4j = [name for name in jars if name.startswith("slf4j-api-")]
    if slf4j != [f"slf4j-api-{SLF4J_VERSION}.jar"]:
        raise RuntimeError(f"expected only slf4j-api {SLF4J_VERSION} among the Kafka jars, found {slf4j}")
    (staging / STAMP).write_text("\n".join(jars) + "\n")  # stamp last: a half-done fetch is never "complete"
    shutil.rmtree(libs, ignore_errors=True)
    staging.replace(libs)


def java_binary() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise RuntimeError("Java (17+) is needed to run the Kafka broker")
    return found


def _classpath(libs: Path) -> str:
    return str(libs / "*")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _free_port() -> int:
    """A free 127.0.0.1 port below the kernel's ephemeral range.

    The broker comes back on the same port after an outage (fault tests stop it for 30 s). A port from the
    ephemeral range could meanwhile be taken as the local port of some outgoing connection, or even by a client's
    reconnect attempt connecting to itself (TCP self-connect: source port == destination port, nothing listening),
    and the broker could not bind it again. Ports below the range are never handed out that way.
    """
    low, _ = _ephemeral_range()
    candidates = range(20000, low) if low > 21000 else range(0)
    for port in random.sample(candidates, min(200, len(candidates))):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as probe:  # no room below the range: any free port
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def new_cluster_id() -> str:
    """A Kafka Uuid (16 random bytes, URL-safe base64 without padding), as `kafka-storage random-uuid` prints.

    Like Kafka's own, never one starting with "-" (the command line would take it for an option).
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


# --- probes through aiokafka, callable from synchronous code (even inside a running event loop) ---


def kafka_metadata(host: str, port: int, topics: list[str] | None = None, timeout_s: float = 2.0) -> dict:
    """{'brokers': [ids], 'controller': id, 'topics': [names]} from the cluster, via aiokafka's admin client."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def ask() -> dict:
        admin = AIOKafkaAdminClient(bootstrap_servers=f"{host}:{port}", request_timeout_ms=int(timeout_s * 1000))
        try:
            await asyncio.wait_for(admin.start(), timeout_s)
            cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
            names = await asyncio.wait_for(admin.list_topics(), timeout_s)
        finally:
            await admin.close()
        brokers = sorted(broker["node_id"] for broker in cluster["brokers"])
        wanted = [name for name in names if topics is None or name in topics]
        return {"brokers": brokers, "controller": cluster["controller_id"], "topics": wanted}

    return _run_async(ask)


def kafka_end_offsets(host: str, port: int, topic: str, partitions: int, timeout_s: float = 2.0) -> dict[int, int]:
    """{partition: log-end offset}, asked of each partition's leader (so it also tells that the broker
    really leads a new partition: Metadata names the leader slightly earlier)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def ask() -> dict[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=f"{host}:{port}", request_timeout_ms=int(timeout_s * 1000))
        try:
            await asyncio.wait_for(consumer.start(), timeout_s)
            wanted = [TopicPartition(topic, index) for index in range(partitions)]
            answer = await asyncio.wait_for(consumer.end_offsets(wanted), timeout_s)
        finally:
            await consumer.stop()
        return {tp.partition: offset for tp, offset in answer.items()}

    return _run_async(ask)


def _run_async(factory):
    """Run `factory()` (a coroutine) to completion on a private event loop, even when called from inside one."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(factory())
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="kafka-admin", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@dataclass
class KafkaBroker:
    """One KRaft node (broker + controller) on 127.0.0.1, every file under `data_dir`.

    `restart()` and `stop()`/`start()` keep the port, the controller port and the data, as a real broker
    coming back would.
    """

    data_dir: Path
    port: int = 9092
    controller_port: int = 0
    version: str = DEFAULT_VERSION
    heap: str = "512m"
    config: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    node_id: int = 1
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if not self.controller_port:
            self.controller_port = _free_port()
        if self.log_dir is None:
            self.log_dir = self.data_dir / "logs"

    @classmethod
    def isolated(cls, data_dir: Path, **overrides) -> KafkaBroker:
        """A broker on free ports (what tests want)."""
        settings = {"port": _free_port(), "controller_port": _free_port()}
        settings.update(overrides)
        return cls(data_dir=Path(data_dir), **settings)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def kraft_dir(self) -> Path:
        return self.data_dir / "kraft"

    @property
    def properties_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def server_properties(self) -> dict[str, str]:
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": f"{self.node_id}@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.kraft_dir),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # After a SIGKILL the restarted controller refuses the broker's new registration
            # (DUPLICATE_BROKER_REGISTRATION) until the old one's session expires: 9 s by default.
            # Heartbeats every 0.5 s also speed up start-up.
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "4000",
            # consumer groups form at once instead of waiting 3 s for more members
            "group.initial.rebalance.delay.ms": "0",
            # two cores: fewer threads than the defaults (3 network, 8 I/O)
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "auto.create.topics.enable": "true",
        }
        props.update(self.config)
        return props

    def _java_command(self, main_class: str, *args: str) -> list[str]:
        home = kafka_home(self.version)
        return [
            java_binary(),
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.log_dir}",
            f"-Dlog4j2.configurationFile={home / 'config' / 'log4j2.properties'}",
            "-cp",
            _classpath(home / "libs"),
            main_class,
            *args,
        ]

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        text = "".join(f"{key}={value}\n" for key, value in self.server_properties().items())
        _write_if_changed(self.properties_path, text)

    def format_storage(self) -> None:
        """`kafka-storage format` once per data dir (a restart keeps the formatted log)."""
        if (self.kraft_dir / "meta.properties").exists():
            return
        command = self._java_command(
            "kafka.tools.StorageTool", "format", "-t", new_cluster_id(), "-c", str(self.properties_path)
        )
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"kafka-storage format failed ({done.returncode}): {done.stdout}{done.stderr}")

    def start(self, timeout_s: float = 60) -> KafkaBroker:
        if self.running:
            return self
        ensure_jars(self.version)
        self._write_config()
        self.format_storage()
        out = open(self.log_dir / "kafka.out", "ab")
        try:
            self.proc = subprocess.Popen(
                self._java_command("kafka.Kafka", str(self.properties_path)),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in a terminal reaches our handler, which stops the broker cleanly
            )
        finally:
            out.close()
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Until a Metadata request is answered with this broker registered and a controller elected."""
        end = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"kafka broker exited with {self.proc.returncode} while starting; see {self.log_dir}/server.log"
                    f" and {self.log_dir}/kafka.out"
                )
            try:
                meta = kafka_metadata("127.0.0.1", self.port, timeout_s=1.0)
                if self.node_id in meta["brokers"] and meta["controller"] >= 0:
                    return
                last = meta
            except Exception as exc:  # not listening yet, or not registered: keep asking
                last = exc
            time.sleep(0.1)
        raise TimeoutError(f"kafka broker on {self.bootstrap} not ready after {timeout_s}s ({last})")

    def stop(self, timeout_s: float = 30) -> int | None:
        """SIGTERM (controlled shutdown), then SIGKILL after `timeout_s`."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # in case it was paused
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: no controlled shutdown; the next start recovers the log."""
        if self.running:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the broker keeps its connections open but answers nothing (a hung broker)."""
        if self.running:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self, down_s: float = 0, hard: bool = False, timeout_s: float = 60) -> KafkaBroker:
        """Stop (or kill, `hard=True`), stay down `down_s` seconds, start again on the same ports and data."""
        if hard:
            self.kill()
        else:
            self.stop()
        if down_s:
            time.sleep(down_s)
        return self.start(timeout_s=timeout_s)

    def create_topic(self, name: str, partitions: int = 1, config: dict[str, str] | None = None) -> str:
        """Create `name` (replication factor 1) and wait until every partition has a leader."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        async def create() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=30000)
            await admin.start()
            try:
                topic = NewTopic(name, num_partitions=partitions, replication_factor=1, topic_configs=config or {})
                await admin.create_topics([topic])
            finally:
                await admin.close()

        _run_async(create)
        self.wait_topic(name, partitions)
        return name

    def wait_topic(self, name: str, partitions: int, timeout_s: float = 30) -> None:
        """Until every partition of `name` answers ListOffsets on this broker (it leads them all)."""
        end = time.monotonic() + timeout_s
        while True:
            try:
                answer = kafka_end_offsets("127.0.0.1", self.port, name, partitions)
                if len(answer) == partitions:
                    return
            except Exception as exc:  # NotLeaderForPartition and friends while leadership settles
                answer = exc
            if time.monotonic() > end:
                raise TimeoutError(f"topic {name} not led after {timeout_s} s ({answer})")
            time.sleep(0.02)

    def end_offsets(self, name: str, partitions: int) -> dict[int, int]:
        """The log-end offset of every partition of `name` (a quick count of what the broker holds)."""
        return dict(sorted(kafka_end_offsets("127.0.0.1", self.port, name, partitions).items()))

    def topics(self) -> list[str]:
        return sorted(kafka_metadata("127.0.0.1", self.port)["topics"])

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


# --- kafka-producer-perf-test ----------------------------------------------------------------------------------


@dataclass
class PerfResult:
    records: int
    records_per_s: float
    mb_per_s: float
    avg_latency_ms: float
    max_latency_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    output: str = ""


_PERF_LINE = re.compile(
    r"(?P<records>\d+) records sent, (?P<rps>[\d.]+) records/sec \((?P<mbps>[\d.]+) MB/sec\), "
    r"(?P<avg>[\d.]+) ms avg latency, (?P<max>[\d.]+) ms max latency, (?P<p50>[\d.]+) ms 50th, "
    r"(?P<p95>[\d.]+) ms 95th, (?P<p99>[\d.]+) ms 99th, (?P<p999>[\d.]+) ms 99\.9th"
)


def parse_perf_output(text: str) -> PerfResult:
    """The summary line of ProducerPerformance (the last line of that shape)."""
    matches = list(_PERF_LINE.finditer(text))
    if not matches:
        raise ValueError(f"no summary in kafka-producer-perf-test output:\n{text[-2000:]}")
    m = matches[-1]
    return PerfResult(
        records=int(m["records"]),
        records_per_s=float(m["rps"]),
        mb_per_s=float(m["mbps"]),
        avg_latency_ms=float(m["avg"]),
        max_latency_ms=float(m["max"]),
        p50_ms=float(m["p50"]),
        p95_ms=float(m["p95"]),
        p99_ms=float(m["p99"]),
        p999_ms=float(m["p999"]),
        output=text,
    )


def producer_perf_test(
    bootstrap: str,
    topic: str,
    num_records: int = 100_000,
    record_size: int = 1024,
    throughput: int = -1,
    acks: str = "all",
    producer_props: dict[str, str] | None = None,
    version: str = DEFAULT_VERSION,
    heap: str = "256m",
    timeout_s: float = 600,
) -> PerfResult:
    """`kafka-producer-perf-test` (org.apache.kafka.tools.ProducerPerformance) and its parsed summary."""
    libs = ensure_jars(version)
    props = {"bootstrap.servers": bootstrap, "acks": acks}
    props.update(producer_props or {})
    command = [
        java_binary(),
        f"-Xmx{heap}",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={libs.parent / 'config' / 'tools-log4j2.properties'}",
        "-cp",
        _classpath(libs),
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        topic,
        "--num-records",
        str(num_records),
        "--record-size",
        str(record_size),
        "--throughput",
        str(throughput),
        # Deprecated in 4.4 for --command-property (it says so on stdout) but accepted, and understood by every 3.x/4.x.
        "--producer-props",
        *(f"{key}={value}" for key, value in props.items()),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"kafka-producer-perf-test failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return parse_perf_output(done.stdout)


# --- command line ------------------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    broker = KafkaBroker(
        data_dir=data_dir,
        port=args.port,
        controller_port=args.controller_port or _free_port(),
        version=args.version,
        heap=args.heap,
    )
    stopping = False

    def on_signal(_signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    broker.start()
    print(
        f"kafka {args.version} is up in {time.monotonic() - started:.1f} s\n"
        f"  bootstrap: {broker.bootstrap}\n"
        f"  data:      {broker.kraft_dir}\n"
        f"  log:       {broker.log_dir / 'server.log'}\n"
        f"Ctrl-C stops.",
        flush=True,
    )
    while not stopping:
        time.sleep(0.2)
        if not broker.running:
            print(f"kafka broker exited with {broker.proc.returncode}", file=sys.stderr)
            return 1
    broker.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.kafka")
    parser.add_argument("--version", default=DEFAULT_VERSION, help="Kafka version on Maven Central")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download the broker and tools jars into the cache (idempotent)")
    fetch.add_argument("--verbose", action="store_true", help="show Maven's output")
    run = sub.add_parser("run", help="run a single-node KRaft broker in the foreground")
    run.add_argument("--port", type=int, default=int(os.environ.get("KAFKA_PORT", "9092")))
    run.add_argument("--controller-port", type=int, default=int(os.environ.get("KAFKA_CONTROLLER_PORT", "0")))
    run.add_argument("--data-dir", default=os.environ.get("KAFKA_DATA_DIR", "./data/kafka"))
    run.add_argument("--heap", default="512m")
    perf = sub.add_parser("perf", help="kafka-producer-perf-test with acks=all against a running broker")
    perf.add_argument("--bootstrap", default="127.0.0.1:9092")
    perf.add_argument("--topic", default="perf-test")
    perf.add_argument("--num-records", type=int, default=200_000)
    perf.add_argument("--record-size", type=int, default=1024)
    perf.add_argument("--throughput", type=int, default=-1)
    perf.add_argument("--producer-props", nargs="*", default=[], help="extra key=value producer settings")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        libs = ensure_jars(args.version, quiet=not args.verbose)
        print(libs)
        return 0
    if args.command == "run":
        return _run(args)
    extra = dict(item.split("=", 1) for item in args.producer_props)
    result = producer_perf_test(
        args.bootstrap, args.topic, args.num_records, args.record_size, args.throughput, producer_props=extra
    )
    print(
        f"{result.records} records, {result.records_per_s:.0f} records/s ({result.mb_per_s:.1f} MB/s), "
        f"latency avg {result.avg_latency_ms:.1f} ms, p50 {result.p50_ms:.0f} ms, p95 {result.p95_ms:.0f} ms, "
        f"p99 {result.p99_ms:.0f} ms, p99.9 {result.p999_ms:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
