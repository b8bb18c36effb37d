"""Gateway benchmark: throughput, latency, CPU and memory of chat completions through the gateway,
compared with calling the test upstream directly. A script that prints numbers, not a test:

    .venv/bin/python benchmarks/gateway.py [--quick]

It starts the test upstream (`tests/upstream_server.py`) as a subprocess, prepares a throwaway
environment (a temp `VAR_DIR` with SQLite, or `DATABASE_URL` as it is; `REDIS_URL` passed through),
migrates, creates an org, a key and one org model per upstream behaviour, starts the gateway the
production way (uvicorn, 2 workers, uvloop, httptools) and drives both with `_loadgen.py`.
Every subprocess is stopped and the temp dir removed on exit, Ctrl-C and errors included.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import math
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# `python benchmarks/gateway.py` puts only benchmarks/ on the path: add the repo root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._loadgen import LoadResult, Request, percentile, run_load, run_until_complete
from tests.gateway_process import gateway_command
from tests.upstream_server import start_subprocess, stop_subprocess

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIN_NOFILE = 8192
API = "/api/v1/llm"
MESSAGES = '[{"role":"user","content":"benchmark request {n}"}]'

# registry id -> the upstream's model option string
MODELS = {
    "bench:plain": "chunks@1",
    "bench:stream": "chunks@20",
    "bench:slow": "chunks@20+delay@5",
}

# Targets (through the gateway).
TARGET_RPS = 450.0  # non-streaming requests/s at concurrency 64
TARGET_SPS = 150.0  # 20-chunk streams/s at concurrency 64
TARGET_CPU_REQ_MS = 3.5
TARGET_CPU_STREAM_MS = 10.0
TARGET_ADDED_MS = 3.0
TARGET_PEAK_MB = 300.0
BIG_STREAMS = 1000


# --------------------------------------------------------------------------------------------
# Process trees: CPU time and memory from /proc


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def tree_pids(root: int) -> list[int]:
    """`root` and every process whose ancestry leads to it."""
    children = _children_map()
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, ()))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / CLK_TCK


def worker_pids(master: int) -> list[int]:
    """The uvicorn workers under `master` (multiprocessing spawn children)."""
    workers = []
    for pid in tree_pids(master)[1:]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"--multiprocessing-fork" in f.read():
                    workers.append(pid)
        except OSError:
            continue
    return sorted(workers)


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine spent in user and system mode (/proc/stat)."""
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()
    user, nice, system = (int(v) for v in fields[1:4])
    return (user + nice + system) / CLK_TCK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


# --------------------------------------------------------------------------------------------
# The environment: upstream, database, gateway


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= MIN_NOFILE:
        return soft
    wanted = MIN_NOFILE * 2
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):  # raising the hard limit needs root
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        wanted = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def gateway_env(var_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in (
        "MEDIA_ROOT",
        "CELERY_BROKER_URL",
        "CLUSTER_REGISTRY_PATH",
        "DJANGO_SETTINGS_MODULE",
    ):
        env.pop(name, None)
    env.update(
        {
            "VAR_DIR": str(var_dir),
            "DEBUG": "false",
            "SECRET_KEY": secrets.token_urlsafe(45)[:60],
            "FIELD_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "ALLOWED_HOSTS": "127.0.0.1",
            "SECURE_SSL_REDIRECT": "false",
            "SESSION_COOKIE_SECURE": "false",
            "CSRF_COOKIE_SECURE": "false",
            "UPSTREAM_ALLOWED_NETWORKS": "127.0.0.0/8",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if not os.environ.get("DATABASE_URL"):
        env.pop("DATABASE_URL", None)  # SQLite under VAR_DIR
    return env


SETUP_SNIPPET = """
import json, os
from orgs.models import Role
from orgs.services import create_org, issue_api_key
from registry.services import add_model
spec = json.loads(os.environ["BENCH_SETUP"])
org = create_org(spec["org"], "Benchmark", actor="benchmark")
for body in spec["models"]:
    add_model(org, body, actor="benchmark")
key, token = issue_api_key(org, role=Role.MEMBER, name="benchmark", actor="benchmark")
print("BENCH_TOKEN", token)
"""

TEARDOWN_SNIPPET = """
import os
from orgs.models import Org
Org.objects.filter(slug=os.environ["BENCH_ORG"]).delete()
"""


def model_definition(registry_id: str, upstream_model: str, upstream_url: str) -> dict[str, Any]:
    """Like tests/conftest.py `model_body`, pointing at the test upstream, without an rpm."""
    return {
        "id": registry_id,
        "provider": "openai-compatible",
        "modelId": upstream_model,
        "apiFormat": "completions",
        "apiProviderType": "openai",
        "created": 1704067200,
        "auth": {"type": "api-key", "value": "sk-bench"},
        "capabilities": {"modalities": {"input": ["text"], "output": ["text"]}, "reasoning": False},
        "baseUrl": upstream_url + "/v1",
        "contextWindow": 8192,
    }


def manage(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    proc = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"manage.py {args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout


def start_gateway(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    cmd = gateway_command(
        port,
        "--workers",
        "2",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    )
    with open(log_path, "wb") as log:
        # Its own session: Ctrl-C reaches only this script, which stops the gateway in order.
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop_gateway(proc: subprocess.Popen[bytes]) -> None:
    pids = tree_pids(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in pids[1:]:  # workers left behind by a master that died
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def chat_once(port: int, path: str, body: dict[str, Any], token: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            path,
            body=json.dumps(body),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(proc: subprocess.Popen[bytes], port: int, token: str, log_path: Path) -> float:
    started = time.monotonic()
    body = {"model": "bench:plain", "messages": [{"role": "user", "content": "ready?"}]}
    last = ""
    while time.monotonic() - started < 60:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited ({proc.returncode}):\n{tail(log_path)}")
        try:
            status, payload = chat_once(port, f"{API}/chat/completions", body, token)
        except OSError as exc:
            last = repr(exc)
        else:
            if status == 200 and len(tree_pids(proc.pid)) >= 3:
                return time.monotonic() - started
            last = f"HTTP {status}: {payload[:300]!r}"
        time.sleep(0.2)
    raise RuntimeError(f"the gateway did not answer in 60 s ({last}):\n{tail(log_path)}")


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------
# Scenarios


@dataclass
class Row:
    scenario: str
    concurrency: int
    target: str  # "direct" or "gateway"
    result: LoadResult
    cpu_s: float  # server tree CPU seconds during the measured run
    peak_rss: int  # bytes, server tree
    client_cpu_s: float
    other_cpu_s: float  # CPU of processes other than the servers and this script (noise)
    worker_cpu_s: list[float]  # per gateway worker (empty for direct runs)

    @property
    def requests(self) -> int:
        return self.result.ok + self.result.errors

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_s * 1000 / self.requests if self.requests else math.nan

    def p50(self) -> float:
        return percentile(self.result.latencies, 50) * 1000

    def p95(self) -> float:
        return percentile(self.result.latencies, 95) * 1000

    def ttfc50(self) -> float:
        return percentile(self.result.ttfc, 50) * 1000


@dataclass
class Bench:
    upstream_port: int
    upstream_pid: int
    gateway_port: int
    gateway_pid: int
    token: str
    duration: float
    warmup: float
    rows: list[Row]
    peak_gateway_rss: int = 0

    def request(self, scenario: str, target: str) -> Request:
        stream = scenario != "non-stream"
        if target == "direct":
            upstream_model = MODELS["bench:plain" if scenario == "non-stream" else "bench:stream"]
            if scenario == "1000 streams":
                upstream_model = MODELS["bench:slow"]
            body = f'{{"model":"{upstream_model}","messages":{MESSAGES}'
            body += ',"stream":true}' if stream else "}"
            return Request(
                "/v1/chat/completions",
                body,
                headers=(("Authorization", "Bearer sk-bench"),),
                stream=stream,
                end_marker=b"[DONE]" if stream else b'"choices"',
            )
        auth = (("Authorization", f"Bearer {self.token}"),)
        if scenario == "non-stream":
            body = f'{{"model":"bench:plain","messages":{MESSAGES}}}'
            return Request(f"{API}/chat/completions", body, headers=auth, end_marker=b'"choices"')
        if scenario == "oRPC stream":
            body = f'{{"model":"bench:stream","messages":{MESSAGES}}}'
            return Request(
                f"{API}/chat/completions/stream",
                body,
                headers=auth,
                stream=True,
                end_marker=b"event: done",
            )
        model = "bench:slow" if scenario == "1000 streams" else "bench:stream"
        body = f'{{"model":"{model}","messages":{MESSAGES},"stream":true}}'
        return Request(
            f"{API}/chat/completions", body, headers=auth, stream=True, end_marker=b"[DONE]"
        )

    def measure(
        self,
        scenario: str,
        concurrency: int,
        target: str,
        *,
        per_connection: int | None = None,
    ) -> Row:
        port = self.gateway_port if target == "gateway" else self.upstream_port
        server = self.gateway_pid if target == "gateway" else self.upstream_pid
        request = self.request(scenario, target)
        if self.warmup > 0:
            run_until_complete(
                run_load(
                    "127.0.0.1",
                    port,
                    request,
                    concurrency=concurrency,
                    duration=self.warmup,
                    record=False,
                    timeout=30,
                )
            )
        pids = tree_pids(server)
        peak = [rss_bytes(pids)]

        def sample() -> None:
            peak[0] = max(peak[0], rss_bytes(pids))

        others = [p for root in (self.gateway_pid, self.upstream_pid) for p in tree_pids(root)]
        client0 = sum(os.times()[:2])
        cpu0 = cpu_seconds(pids)
        ours0 = cpu_seconds(others)
        workers = worker_pids(server) if target == "gateway" else []
        workers0 = [cpu_seconds([w]) for w in workers]
        busy0 = machine_busy_seconds()
        result = run_until_complete(
            run_load(
                "127.0.0.1",
                port,
                request,
                concurrency=concurrency,
                duration=None if per_connection else self.duration,
                per_connection=per_connection,
                timeout=60 if per_connection else 30,
                on_tick=sample,
                tick_interval=0.1,
            )
        )
        after = tree_pids(server)
        cpu1 = cpu_seconds(after)
        client_cpu = sum(os.times()[:2]) - client0
        worker_cpu = [cpu_seconds([w]) - c0 for w, c0 in zip(workers, workers0, strict=True)]
        other_cpu = machine_busy_seconds() - busy0 - (cpu_seconds(others) - ours0) - client_cpu
        if set(after) != set(pids):
            print(f"  note: the {target} process tree changed during {scenario} c={concurrency}")
        sample()
        row = Row(
            scenario,
            concurrency,
            target,
            result,
            cpu1 - cpu0,
            peak[0],
            client_cpu,
            other_cpu,
            worker_cpu,
        )
        if target == "gateway":
            self.peak_gateway_rss = max(self.peak_gateway_rss, peak[0])
        self.rows.append(row)
        print_row(row)
        return row

    def find(self, scenario: str, concurrency: int, target: str) -> Row | None:
        for row in self.rows:
            if (row.scenario, row.concurrency, row.target) == (scenario, concurrency, target):
                return row
        return None


# --------------------------------------------------------------------------------------------
# Printing

HEADER = (
    f"{'scenario':<13} {'conc':>5} {'target':<8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
    f"{'TTFC p50':>9} {'errors':>6} {'srv CPU ms/req':>14} {'srv peak MB':>11} {'client CPU':>10} "
    f"{'other CPU':>9} {'worker split':>12}"
)


def fmt(value: float, spec: str = ".1f") -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def print_row(row: Row) -> None:
    res = row.result
    ttfc = row.ttfc50() if row.scenario != "non-stream" else math.nan
    client = row.client_cpu_s / res.elapsed * 100 if res.elapsed else math.nan
    other = max(0.0, row.other_cpu_s) / res.elapsed * 100 if res.elapsed else math.nan
    total = sum(row.worker_cpu_s)
    split = "/".join(f"{c / total * 100:.0f}" for c in row.worker_cpu_s) if total > 0 else "-"
    print(
        f"{row.scenario:<13} {row.concurrency:>5} {row.target:<8} {fmt(res.rate):>8} "
        f"{fmt(row.p50(), '.2f'):>8} {fmt(row.p95(), '.2f'):>8} {fmt(ttfc, '.2f'):>9} "
        f"{res.errors:>6} {fmt(row.cpu_ms_per_request, '.2f'):>14} "
        f"{fmt(row.peak_rss / 2**20):>11} {fmt(client, '.0f') + '%':>10} "
        f"{fmt(other, '.0f') + '%':>9} {split:>12}",
        flush=True,
    )
    for kind, count in res.error_kinds.most_common(3):
        print(f"    {count} x {kind}")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_comparison(bench: Bench) -> None:
    print()
    print("Gateway vs direct (same scenario and concurrency; oRPC is compared with direct SSE):")
    print(
        f"{'scenario':<13} {'conc':>5} {'added p50 ms':>12} {'added TTFC p50 ms':>17} "
        f"{'throughput gw/direct':>20}"
    )
    for row in bench.rows:
        if row.target != "gateway" or row.scenario == "1000 streams":
            continue
        base_scenario = "stream" if row.scenario == "oRPC stream" else row.scenario
        base = bench.find(base_scenario, row.concurrency, "direct")
        if base is None:
            continue
        added = row.p50() - base.p50()
        added_ttfc = row.ttfc50() - base.ttfc50() if row.scenario != "non-stream" else math.nan
        ratio = row.result.rate / base.result.rate if base.result.rate else math.nan
        print(
            f"{row.scenario:<13} {row.concurrency:>5} {fmt(added, '+.2f'):>12} "
            f"{fmt(added_ttfc, '+.2f'):>17} {fmt(ratio, '.2f'):>20}"
        )


def print_targets(bench: Bench, big: Row | None) -> None:
    print()
    print("Targets (through the gateway):")
    lines: list[tuple[str, str, bool | None]] = []

    def add(label: str, value: float, unit: str, ok: bool | None) -> None:
        lines.append((label, f"{fmt(value, '.2f')} {unit}", ok))

    plain64 = bench.find("non-stream", 64, "gateway")
    stream64 = bench.find("stream", 64, "gateway")
    if plain64:
        rate = plain64.result.rate
        add(f"non-stream req/s at c=64 >= {TARGET_RPS:.0f}", rate, "req/s", rate >= TARGET_RPS)
    if stream64:
        rate = stream64.result.rate
        add(
            f"20-chunk streams/s at c=64 >= {TARGET_SPS:.0f}", rate, "streams/s", rate >= TARGET_SPS
        )
    if plain64:
        cpu = plain64.cpu_ms_per_request
        add(
            f"CPU ms per request (c=64) <= {TARGET_CPU_REQ_MS}", cpu, "ms", cpu <= TARGET_CPU_REQ_MS
        )
    if stream64:
        cpu = stream64.cpu_ms_per_request
        ok = cpu <= TARGET_CPU_STREAM_MS
        add(f"CPU ms per stream (c=64) <= {TARGET_CPU_STREAM_MS:.0f}", cpu, "ms", ok)
    for scenario, what in (("non-stream", "p50"), ("stream", "TTFC")):
        gw, direct = bench.find(scenario, 1, "gateway"), bench.find(scenario, 1, "direct")
        if gw and direct:
            added = gw.p50() - direct.p50() if what == "p50" else gw.ttfc50() - direct.ttfc50()
            label = f"added {what} at c=1 ({scenario}) <= {TARGET_ADDED_MS:.0f} ms"
            add(label, added, "ms", added <= TARGET_ADDED_MS)
    if big is not None:
        lines.append(
            (
                f"{BIG_STREAMS} concurrent streams (5 ms/chunk): no error",
                f"{big.result.errors} errors, {big.result.elapsed:.2f} s wall",
                big.result.errors == 0 and big.result.ok == BIG_STREAMS,
            )
        )
    peak = bench.peak_gateway_rss / 2**20
    add(f"peak server memory <= {TARGET_PEAK_MB:.0f} MB", peak, "MB", peak <= TARGET_PEAK_MB)
    for label, value, ok in lines:
        print(f"  {label:<52} {value:>32}  {'' if ok is None else verdict(ok)}")
    failed = sum(1 for _, _, ok in lines if ok is False)
    print(f"  {len(lines) - failed}/{len(lines)} targets met")


# --------------------------------------------------------------------------------------------
# Main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the gateway against the test upstream.")
    parser.add_argument("--quick", action="store_true", help="fewer and shorter runs")
    args = parser.parse_args(argv)
    if args.quick:
        concurrencies, duration, warmup = (1, 64), 1.5, 0.3
    else:
        concurrencies, duration, warmup = (1, 16, 64), 5.0, 1.0

    # SIGTERM ends the script like Ctrl-C does: through the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with it ignored
    nofile = raise_nofile()  # before the subprocesses start: they inherit it
    began = time.monotonic()

    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)

        upstream_proc, upstream_url = start_subprocess()
        stack.callback(stop_subprocess, upstream_proc)
        upstream_port = int(upstream_url.rsplit(":", 1)[1])

        env = gateway_env(tmp)
        org = f"bench-{secrets.token_hex(4)}"
        database = "DATABASE_URL" if os.environ.get("DATABASE_URL") else f"SQLite in {tmp}"
        redis = "REDIS_URL" if os.environ.get("REDIS_URL") else "local memory"
        print(
            f"machine: {os.cpu_count()} CPUs; Python {sys.version.split()[0]}; "
            f"open files limit {nofile}; load average {os.getloadavg()[0]:.2f}"
        )
        print(f"database: {database}; cache and rate limits: {redis}; upstream {upstream_url}")

        t = time.monotonic()
        manage(env, "migrate", "--noinput", "-v", "0")
        setup = {
            "org": org,
            "models": [
                model_definition(rid, option, upstream_url) for rid, option in MODELS.items()
            ],
        }
        out = manage({**env, "BENCH_SETUP": json.dumps(setup)}, "shell", "-c", SETUP_SNIPPET)
        token = next(
            (line.split()[1] for line in out.splitlines() if line.startswith("BENCH_TOKEN ")), ""
        )
        if not token:
            raise RuntimeError(f"the setup snippet printed no key:\n{out}")
        if os.environ.get("DATABASE_URL"):  # a shared database: remove the org afterwards
            stack.callback(_teardown_org, {**env, "BENCH_ORG": org})
        print(f"migrate + setup: {time.monotonic() - t:.1f} s")

        gateway_port = free_port()
        log_path = tmp / "gateway.log"
        gateway_proc = start_gateway(env, gateway_port, log_path)
        stack.callback(stop_gateway, gateway_proc)
        ready = wait_ready(gateway_proc, gateway_port, token, log_path)
        pids = tree_pids(gateway_proc.pid)
        idle_rss = rss_bytes(pids)
        print(
            f"gateway: uvicorn --workers 2 --loop uvloop --http httptools on :{gateway_port}, "
            f"ready in {ready:.1f} s; {len(pids)} processes, {idle_rss / 2**20:.1f} MB RSS idle"
        )

        bench = Bench(
            upstream_port=upstream_port,
            upstream_pid=upstream_proc.pid,
            gateway_port=gateway_port,
            gateway_pid=gateway_proc.pid,
            token=token,
            duration=duration,
            warmup=warmup,
            rows=[],
            peak_gateway_rss=idle_rss,
        )
        print()
        print(
            f"Each run: {warmup:g} s warm-up, then {duration:g} s measured. "
            "'srv' = the target's server process tree (direct: the upstream; gateway: uvicorn "
            "master + workers); 'client CPU' = this load generator, % of one core; 'other CPU' = "
            "every other process of the machine, % of one core (noise: should be ~0); 'worker "
            "split' = each gateway worker's share of the workers' CPU (connections are not "
            "balanced across workers: 100/0 means one worker served them all)."
        )
        print(HEADER)
        for scenario in ("non-stream", "stream"):
            for concurrency in concurrencies:
                for target in ("direct", "gateway"):
                    bench.measure(scenario, concurrency, target)
        bench.measure("oRPC stream", 64, "gateway")

        print()
        print(
            f"{BIG_STREAMS} concurrent streams, one request each, 20 chunks at 5 ms per chunk "
            "(ideal wall time ~0.1 s plus connection setup):"
        )
        print(HEADER)
        bench.warmup = 0
        bench.measure("1000 streams", BIG_STREAMS, "direct", per_connection=1)
        big = bench.measure("1000 streams", BIG_STREAMS, "gateway", per_connection=1)
        print(f"  gateway: {big.result.errors} errors, wall time {big.result.elapsed:.2f} s")
        if any(row.result.errors for row in bench.rows if row.target == "gateway"):
            print("  the gateway log ends with:")
            print("    " + tail(log_path).replace("\n", "\n    "))

        print_comparison(bench)
        print()
        print("Server cost through the gateway (uvicorn master + 2 workers):")
        for scenario, unit in (("non-stream", "request"), ("stream", "stream")):
            values = [
                f"c={c}: {fmt(row.cpu_ms_per_request, '.2f')}"
                for c in concurrencies
                if (row := bench.find(scenario, c, "gateway"))
            ]
            print(f"  CPU ms per {unit:<8} {'  '.join(values)}")
        orpc = bench.find("oRPC stream", 64, "gateway")
        if orpc:
            print(f"  CPU ms per oRPC stream  c=64: {fmt(orpc.cpu_ms_per_request, '.2f')}")
        print(
            f"  peak server memory: {bench.peak_gateway_rss / 2**20:.1f} MB "
            f"(RSS of the tree, sampled every 100 ms; idle {idle_rss / 2**20:.1f} MB)"
        )
        print_targets(bench, big)
        noisy = [r for r in bench.rows if r.other_cpu_s / max(r.result.elapsed, 1e-9) > 0.1]
        if noisy:
            print(
                f"  warning: other processes used > 10% of a core during {len(noisy)} of "
                f"{len(bench.rows)} runs (column 'other CPU'): the machine was not quiet"
            )
        skewed = [
            r
            for r in bench.rows
            if len(r.worker_cpu_s) > 1
            and r.concurrency > 1
            and max(r.worker_cpu_s) > 0.8 * sum(r.worker_cpu_s)
        ]
        if skewed:
            runs = ", ".join(f"{r.scenario} c={r.concurrency}" for r in skewed)
            print(f"  warning: one gateway worker did > 80% of the work in: {runs}")
        print()
        print(f"total time {time.monotonic() - began:.0f} s")
    return 0


def _teardown_org(env: dict[str, str]) -> None:
    try:
        manage(env, "shell", "-c", TEARDOWN_SNIPPET, timeout=60)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"note: could not remove the benchmark org {env['BENCH_ORG']}: {exc}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # everything was stopped and removed on the way out
        print("interrupted", file=sys.stderr)
        sys.exit(130)
