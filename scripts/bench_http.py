"""`make bench`: the ingestion benchmark of ingestion-contract.md §8.

The stack as `make up` runs it (ack mode, S3 sink to a folder on a real disk), wrk with 1 thread
and 64 connections on the same box posting bodies of 10 real SDK events (plain JSON and
gzip+Base64), and in the same run nginx answering `return 204` under the same wrk. Prints req/s,
events/s, p50/p99 and the ratio to nginx, then p99 at half our peak rate, and proxy memory.

    python -m scripts.bench_http [--seconds 10] [--connections 64] [--processes 0]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from scripts import sdkgen
from scripts.stack import LocalStack, _wait_http, free_port, metric_value

EVENTS_PER_BODY = 10

LUA = """
wrk.method = "POST"
wrk.body = io.open("{body}", "rb"):read("*a")
wrk.headers["Content-Type"] = "application/json; charset=utf-8"
wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36"
wrk.headers["Origin"] = "https://shop.example.com"
local pause = {pause_ms}
function request() return wrk.format(nil, "{target}") end
if pause > 0 then function delay() return pause end end
"""

NGINX_CONF = """
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  client_max_body_size 1m;
  client_body_buffer_size 64k;
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location / {{ return 204; }}
  }}
}}
"""


def parse_wrk(output: str) -> dict:
    def seconds(text: str) -> float:
        value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
        return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]

    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", output, re.M)
        result[f"p{pct}_ms"] = seconds(match.group(1)) * 1000 if match else float("nan")
    statuses = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non2xx"] = int(statuses.group(1)) if statuses else 0
    errors = re.search(r"Socket errors: (.*)", output)
    result["socket_errors"] = errors.group(1).strip() if errors else "none"
    return result


def run_wrk(
    url_base: str,
    target: str,
    body_file: Path,
    seconds: float,
    connections: int,
    pause_ms: int = 0,
    watch: dict[str, list[psutil.Process]] | None = None,
) -> dict:
    """One wrk run; with `watch`, also the CPU share (of one core) each group of processes used."""
    script = body_file.with_suffix(f".{pause_ms}.lua")
    script.write_text(LUA.format(body=body_file, target=target, pause_ms=pause_ms))
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url_base]
    wrk = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    groups = {"wrk": [psutil.Process(wrk.pid)], **(watch or {})}

    def cpu() -> dict[str, float]:
        return {name: sum(sum(p.cpu_times()[:2]) for p in procs) for name, procs in groups.items()}

    before, started = cpu(), time.monotonic()
    time.sleep(seconds * 0.9)
    after, elapsed = cpu(), time.monotonic() - started
    output, _ = wrk.communicate()
    if wrk.returncode:
        raise RuntimeError(f"wrk failed: {output}")
    result = parse_wrk(output)
    result["cpu"] = {name: (after[name] - before[name]) / elapsed for name in groups}
    return result


def start_nginx(work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=work, port=port))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(work), "-g", "daemon off;"])
    _wait_http(f"http://127.0.0.1:{port}/", 10, expect=204, proc=proc)
    return proc, port


def group_commits(stack: LocalStack) -> tuple[float, float, float]:
    """(commits, records, seconds in write+fdatasync) so far, from the worker's metrics."""
    import urllib.request

    with urllib.request.urlopen(stack.worker_url + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return (
        metric_value(text, "worker_wal_commit_records_count"),
        metric_value(text, "worker_wal_commit_records_sum"),
        metric_value(text, "worker_wal_fsync_seconds_sum"),
    )


def proxy_processes(stack: LocalStack) -> list[psutil.Process]:
    """The serving processes (not the supervisor, not multiprocessing's resource tracker)."""
    children = psutil.Process(stack.proxy.pid).children()
    return [child for child in children if "resource_tracker" not in " ".join(child.cmdline())]


def proxy_rss_mb(stack: LocalStack) -> list[float]:
    return [round(child.memory_info().rss / 1e6, 1) for child in proxy_processes(stack)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_http")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--processes", type=int, default=0, help="proxy processes (0 = one per core)")
    parser.add_argument("--data-dir", default=os.environ.get("BENCH_DATA_DIR", "./data/bench"))
    args = parser.parse_args(argv)

    data_dir = Path(args.data_dir).resolve()
    shutil.rmtree(data_dir, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="bench-http-"))
    events = sdkgen.sample_batch(EVENTS_PER_BODY, seed=42)
    shapes = {}
    for name, packed in (("gzip+base64", True), ("plain-json", False)):
        body = sdkgen.body_text(events, gzip_base64=packed)
        body_file = work / f"{name}.body"
        body_file.write_text(body)
        shapes[name] = (body_file, sdkgen.collect_target("shop", body, 1, gzip_base64=packed), len(body))

    nginx, nginx_port = start_nginx(work / "nginx")
    stack = LocalStack(
        data_dir=data_dir,
        port=free_port(),
        worker_http_port=free_port(),
        processes=args.processes,
        roll_seconds=10,
        log_dir=data_dir / "logs",
    )
    stack.start()
    rows = []
    try:
        for name, (body_file, target, size) in shapes.items():
            run_wrk(stack.url, target, body_file, 2, args.connections)  # warm-up
            watch = {"proxy": proxy_processes(stack), "worker": [psutil.Process(stack.worker.pid)]}
            commits_before = group_commits(stack)
            ours = run_wrk(stack.url, target, body_file, args.seconds, args.connections, watch=watch)
            ours["commits"] = [
                after - before for after, before in zip(group_commits(stack), commits_before, strict=True)
            ]
            ref = run_wrk(f"http://127.0.0.1:{nginx_port}", target, body_file, args.seconds, args.connections)
            rss = proxy_rss_mb(stack)
            # Half our peak rate, paced per connection, for the latency goal.
            # Half our peak rate, paced by a per-connection pause (wrk's delay(), whole ms), with
            # two short calibration runs since the pause's effect depends on the service time.
            half = ours["rps"] / 2
            pause = max(1, round(args.connections * 1000 / half - ours["p50_ms"]))
            for _ in range(2):
                probe = run_wrk(stack.url, target, body_file, 3, args.connections, pause)
                cycle_ms = args.connections * 1000 / probe["rps"]  # pause + service time per request
                pause = max(1, round(pause + cycle_ms * (probe["rps"] / half - 1)))
            paced = run_wrk(stack.url, target, body_file, args.seconds, args.connections, pause)
            rows.append((name, size, ours, ref, paced, rss))
    finally:
        stack.stop()
        nginx.terminate()
        nginx.wait()

    cores = os.cpu_count()
    print(
        f"\ningestion benchmark: {cores} cores, wrk -t1 -c{args.connections} -d{args.seconds:g}s, "
        f"{EVENTS_PER_BODY} events per body, ack mode, S3 sink to {data_dir} (real disk)"
    )
    print(
        f"{'shape':<12} {'body':>6} {'req/s':>9} {'events/s':>10} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'nginx req/s':>11} {'ratio':>6} {'half-rate req/s':>15} {'p99 ms':>7} {'proxy RSS MB':>14}"
    )
    for name, size, ours, ref, paced, rss in rows:
        print(
            f"{name:<12} {size:>6} {ours['rps']:>9.0f} {ours['rps'] * EVENTS_PER_BODY:>10.0f} "
            f"{ours['p50_ms']:>7.2f} {ours['p99_ms']:>7.2f} {ref['rps']:>11.0f} "
            f"{ours['rps'] / ref['rps']:>6.3f} {paced['rps']:>15.0f} {paced['p99_ms']:>7.2f} "
            f"{'/'.join(str(r) for r in rss):>14}"
        )
        if ours["non2xx"] or paced["non2xx"]:
            print(f"  note: non-200 answers under load: {ours['non2xx']} (peak), {paced['non2xx']} (half rate)")
        shares = ", ".join(f"{name} {share * 100:.0f}%" for name, share in ours["cpu"].items())
        print(
            f"  CPU at peak, in % of one core: {shares}; proxy CPU per request "
            f"{ours['cpu']['proxy'] / ours['rps'] * 1e6:.0f} us, "
            f"worker {ours['cpu']['worker'] / ours['rps'] * 1e6:.0f} us"
        )
        commits, records, sync_s = ours["commits"]
        if commits:
            print(
                f"  group commit at peak: {commits:.0f} fdatasyncs for {records:.0f} records "
                f"({records / commits:.1f} per sync, {sync_s / commits * 1000:.2f} ms per write+sync)"
            )
        if ours["socket_errors"] != "none":
            print(f"  socket errors: {ours['socket_errors']}")
    print(f"run at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
