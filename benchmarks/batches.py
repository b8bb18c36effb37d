"""Batch benchmark: lines per second and worker memory for a 1,000-line and a 10,000-line batch
against the fast test upstream. A script that prints numbers, not a test:

    .venv/bin/python benchmarks/batches.py [--lines 1000,10000] [--concurrency 16]

It starts the test upstream (`tests/upstream_server.py`) as a subprocess, prepares a throwaway
environment (a temp `VAR_DIR` with SQLite and the filesystem broker; `DATABASE_URL`,
`CELERY_BROKER_URL` and `REDIS_URL` are used as they are when set, with a private queue),
migrates, creates an org, a key and a model, writes each input file through the service layer
(`batches.services.create_file`), then for each size starts a fresh `celery -A dashboard worker`
(solo pool), creates the batch (`services.create_batch`) and waits for it to complete. It prints
the run rate (in_progress → completed), the end-to-end rate (created → completed) and the
worker's peak RSS, so that memory can be compared across file sizes.

Targets: >= 300 lines/s on 2 cores; peak RSS for 10,000 lines within 15 % of 1,000 lines.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# `python benchmarks/batches.py` puts only benchmarks/ on the path: add the repo root.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.upstream_server import start_subprocess, stop_subprocess  # noqa: E402

TARGET_LINES_PER_SECOND = 300.0
TARGET_MEMORY_GROWTH = 0.15
UPSTREAM_MODEL = "chunks@5"


def bench_env(var_dir: Path, queue: str, concurrency: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("MEDIA_ROOT", "CLUSTER_REGISTRY_PATH", "DJANGO_SETTINGS_MODULE"):
        env.pop(name, None)
    env.update(
        {
            "VAR_DIR": str(var_dir),
            "DEBUG": "false",
            "SECRET_KEY": secrets.token_urlsafe(45)[:60],
            "FIELD_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "ALLOWED_HOSTS": "127.0.0.1",
            "SECURE_SSL_REDIRECT": "false",
            "UPSTREAM_ALLOWED_NETWORKS": "127.0.0.0/8",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            "CELERY_QUEUE": queue,
            "BATCH_CONCURRENCY": str(concurrency),
            "BATCH_SLICE_SECONDS": "600",
        }
    )
    return env


def rss_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for raw in f:
                if raw.startswith(field.encode() + b":"):
                    return int(raw.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Worker:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "dashboard",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "-Q",
            env["CELERY_QUEUE"],
            "-n",
            f"bench-{secrets.token_hex(3)}@%h",
        ]
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while b" ready." not in self.log_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the worker did not start:\n{self.log_path.read_text()[-3000:]}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def write_input(path: Path, lines: int) -> None:
    with path.open("w") as out:
        for i in range(lines):
            body = {
                "model": "bench:chat",
                "messages": [{"role": "user", "content": f"benchmark line {i}"}],
                "max_tokens": 16,
            }
            row = {"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions"}
            out.write(json.dumps({**row, "body": body}) + "\n")


def run_one(env: dict[str, str], caller: Any, file: Any, lines: int, tmp: Path) -> dict[str, Any]:
    from batches import services
    from batches.models import Batch

    worker = Worker(env, tmp / f"worker-{lines}.log")
    try:
        worker.wait_ready()
        idle_kib = rss_kib(worker.proc.pid, "VmRSS")
        cpu_before = cpu_seconds(worker.proc.pid)
        peak = [idle_kib]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_kib(worker.proc.pid, "VmRSS"))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        batch = services.create_batch(
            caller, {"input_file_id": file.public_id, "endpoint": "/v1/chat/completions"}
        )
        deadline = time.monotonic() + max(120, lines / 20)
        while True:
            batch = Batch.objects.get(pk=batch.pk)
            if batch.is_terminal:
                break
            if worker.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"batch stuck in {batch.status}:\n{worker.log_path.read_text()}")
            time.sleep(0.05)
        done.set()
        sampler.join()
        cpu = cpu_seconds(worker.proc.pid) - cpu_before
        hwm = rss_kib(worker.proc.pid, "VmHWM")
    finally:
        worker.stop()
    if batch.status != "completed" or batch.completed != lines:
        from collections import Counter

        from batches.models import BatchItem

        errors = Counter(
            str(error)[:200]
            for error in BatchItem.objects.filter(batch=batch)
            .exclude(status="succeeded")
            .values_list("error", flat=True)
        )
        log = worker.log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(
            f"batch ended {batch.status} with {batch.completed}/{lines} lines done: {errors}\n"
            f"worker log:\n{log}"
        )
    run_s = (batch.completed_at - batch.in_progress_at).total_seconds()
    total_s = (batch.completed_at - batch.created_at).total_seconds()
    return {
        "lines": lines,
        "run_s": run_s,
        "total_s": total_s,
        "run_rate": lines / run_s,
        "total_rate": lines / total_s,
        "worker_cpu_ms_per_line": cpu * 1000 / lines,
        "idle_mib": idle_kib / 1024,
        "peak_mib": max(peak[0], hwm) / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", default="1000,10000", help="comma-separated batch sizes")
    parser.add_argument("--concurrency", type=int, default=16, help="BATCH_CONCURRENCY")
    args = parser.parse_args()
    sizes = [int(n) for n in args.lines.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="bench-batches-"))
    queue = f"bench-{secrets.token_hex(4)}"
    env = bench_env(tmp, queue, args.concurrency)
    upstream, upstream_url = start_subprocess()
    org = None
    try:
        os.environ.update(env)
        os.environ["DJANGO_SETTINGS_MODULE"] = "dashboard.settings"
        import django

        django.setup()
        from django.core.files.uploadedfile import UploadedFile
        from django.core.management import call_command

        from batches import services
        from orgs.auth import Caller
        from orgs.models import Role
        from orgs.services import create_org, issue_api_key
        from registry.services import add_model

        call_command("migrate", verbosity=0, interactive=False)
        org = create_org(f"bench-{secrets.token_hex(3)}", "Batch benchmark", actor="benchmark")
        add_model(
            org,
            {
                "id": "bench:chat",
                "provider": "openai-compatible",
                "modelId": UPSTREAM_MODEL,
                "apiFormat": "completions",
                "apiProviderType": "openai",
                "created": 1704067200,
                "auth": {"type": "api-key", "value": "sk-bench"},
                "capabilities": {
                    "modalities": {"input": ["text"], "output": ["text"]},
                    "reasoning": False,
                },
                "baseUrl": upstream_url + "/v1",
                "contextWindow": 8192,
            },
            actor="benchmark",
        )
        key, _ = issue_api_key(org, role=Role.MEMBER, name="benchmark", actor="benchmark")
        caller = Caller(org=org, key=key)

        print(
            f"upstream {upstream_url} ({UPSTREAM_MODEL}), database "
            f"{'DATABASE_URL' if os.environ.get('DATABASE_URL') else 'SQLite in ' + str(tmp)}, "
            f"broker {os.environ.get('CELERY_BROKER_URL') or 'filesystem'}, "
            f"BATCH_CONCURRENCY={args.concurrency}, {os.cpu_count()} CPUs"
        )
        results = []
        for lines in sizes:
            path = tmp / f"in-{lines}.jsonl"
            write_input(path, lines)
            with path.open("rb") as handle:
                upload = UploadedFile(handle, name=path.name, size=path.stat().st_size)
                file = services.create_file(caller, upload, "batch")
            result = run_one(env, caller, file, lines, tmp)
            results.append(result)
            print(
                f"{lines:>6} lines: {result['run_rate']:7.1f} lines/s running "
                f"({result['run_s']:.2f} s), {result['total_rate']:7.1f} lines/s end to end "
                f"({result['total_s']:.2f} s); worker CPU {result['worker_cpu_ms_per_line']:.2f} "
                f"ms/line; worker RSS idle {result['idle_mib']:.0f} MiB, "
                f"peak {result['peak_mib']:.0f} MiB"
            )
        best = max(r["total_rate"] for r in results if r["lines"] == max(sizes))
        verdict = "OK" if best >= TARGET_LINES_PER_SECOND else "BELOW TARGET"
        print(f"throughput target {TARGET_LINES_PER_SECOND:.0f} lines/s: {verdict}")
        if len(results) > 1:
            small, large = results[0], results[-1]
            growth = (large["peak_mib"] - small["peak_mib"]) / small["peak_mib"]
            verdict = "OK" if growth <= TARGET_MEMORY_GROWTH else "GROWS WITH FILE SIZE"
            print(
                f"memory: peak {small['peak_mib']:.0f} MiB for {small['lines']} lines, "
                f"{large['peak_mib']:.0f} MiB for {large['lines']} lines "
                f"({growth * 100:+.1f} %): {verdict}"
            )
    finally:
        if org is not None:
            with contextlib.suppress(Exception):
                org.delete()
        stop_subprocess(upstream)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
