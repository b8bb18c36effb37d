"""`make run` on embedded defaults, end to end: the first command of README.

It runs the real target (migrate, demo data, uvicorn and a Celery worker with beat) with no
DATABASE_URL, REDIS_URL or CELERY_BROKER_URL (SQLite, local-memory cache and the filesystem
broker under a private VAR_DIR), then follows README: its curl commands and its SDK example with
the printed demo keys, a chat completion and a batch that the worker runs. Ctrl-C stops both.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.canary import scan_log_file
from tests.conftest import free_port
from tests.upstream_server import UpstreamServer

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# Variables that would point `make run` at this test run's services instead of its defaults.
UNSET = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_QUEUE", "CLUSTER_REGISTRY_PATH")


class MakeRun:
    def __init__(self, port: int, var_dir: Path, log: Path) -> None:
        self.port, self.var_dir, self.log_path = port, var_dir, log
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if k not in UNSET}
        env.update(VAR_DIR=str(var_dir), UPSTREAM_ALLOWED_NETWORKS="127.0.0.0/8")
        env.pop("MAKEFLAGS", None)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                ["make", "--no-print-directory", "run", f"PORT={port}", "HOST=127.0.0.1"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"make run exited {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                healthy = httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
                if healthy and "celery@" in self.log() and " ready." in self.log():
                    return
            time.sleep(0.25)
        raise AssertionError(f"make run was not ready in {timeout} s:\n{self.log()[-4000:]}")

    def key(self, label: str) -> str:
        match = re.search(rf"{label} API key .*?(mk_\S+)", self.log())
        assert match, self.log()
        return match.group(1)

    def interrupt(self, timeout: float = 60.0) -> int:
        """Ctrl-C: SIGINT to the foreground process group, as a terminal sends it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeRun]:
    base = tmp_path_factory.mktemp("make-run")
    var_dir = base / "var"
    var_dir.mkdir()
    run = MakeRun(free_port(), var_dir, base / "make-run.out")
    try:
        run.wait_ready()
        yield run
    finally:
        run.kill()
        # The demo keys are printed once, on purpose, in the credentials block (kept in the .out
        # file); the rest of the output (server, worker, beat) goes through the secrets canary.
        rest = base / "make-run.log"
        rest.write_text(re.sub(r"(?m)^.*API key .*mk_\S+$", "", run.log()))
        scan_log_file(rest)


def _block_after(marker: str, lang: str) -> str:
    start = README.index(marker)
    match = re.compile(rf"```{lang}\n(.*?)```", re.S).search(README, start)
    assert match, f"no {lang} block after {marker!r} in README"
    return match.group(1)


def _json_values(text: str) -> list[Any]:
    decoder, values, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        value, i = decoder.raw_decode(text, i)
        values.append(value)
    return values


def test_it_prints_the_demo_credentials_and_serves_the_dashboard(make_run: MakeRun) -> None:
    log = make_run.log()
    assert re.search(r"user: admin\s+password: \S+", log)
    assert make_run.key("admin").startswith("mk_") and make_run.key("member").startswith("mk_")
    assert (make_run.var_dir / "db.sqlite3").exists()  # SQLite under VAR_DIR
    assert (make_run.var_dir / "broker").is_dir()  # the filesystem broker
    page = httpx.get(f"{make_run.url}/", follow_redirects=True, timeout=10)
    assert page.status_code == 200 and "<form" in page.text  # the sign-in page


def test_readme_curl_commands_work(make_run: MakeRun) -> None:
    script = _block_after("With curl:", "sh")
    script = script.replace("KEY=mk_...", f"KEY={make_run.key('admin')}")
    script = script.replace("http://127.0.0.1:8000", make_run.url)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    listed, added, auto = _json_values(done.stdout)
    assert listed["object"] == "list" and listed["data"]
    assert added["id"] == "acme:my-chat" and added["source"] == "database", added
    assert auto.get("modelId") == "acme:my-chat" or "acme:my-chat" in json.dumps(auto), auto


def test_readme_sdk_example_works(make_run: MakeRun) -> None:
    code = _block_after("With the official SDK:", "python")
    code = code.replace('"mk_..."', repr(make_run.key("admin")))
    code = code.replace("http://127.0.0.1:8000", make_run.url)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "openai:gpt-4o-mini" in done.stdout  # listed once granted
    assert "404" in done.stdout and "nope:missing" in done.stdout  # the error it prints


def test_chat_and_a_batch_run_on_the_embedded_worker(make_run: MakeRun) -> None:
    from meetkai_mka1 import SDK
    from openai import OpenAI

    with UpstreamServer() as up:
        key = make_run.key("admin")
        body = {
            "id": "demo:loopback",
            "provider": "openai-compatible",
            "modelId": "chunks@2",
            "apiFormat": "completions",
            "apiProviderType": "openai",
            "created": 1704067200,
            "baseUrl": f"{up.url}/v1",
            "auth": {"type": "none"},
            "capabilities": {
                "modalities": {"input": ["text"], "output": ["text"]},
                "reasoning": False,
            },
        }
        added = httpx.post(
            f"{make_run.url}/api/v1/llm/models/registry",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert added.status_code == 200, added.text
        client = OpenAI(base_url=f"{make_run.url}/api/v1/llm", api_key=key, max_retries=0)
        answer = client.chat.completions.create(
            model="demo:loopback", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content == "tok0 tok1 "

        lines = [
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "demo:loopback", "messages": [{"role": "user", "content": "x"}]},
            }
            for i in range(3)
        ]
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        with SDK(bearer_auth=key, server_url=make_run.url) as sdk:
            uploaded = sdk.llm.files.upload(
                file={"file_name": "in.jsonl", "content": data}, purpose="batch"
            )
            batch = sdk.llm.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions"
            )
            deadline = time.monotonic() + 90
            while (batch := sdk.llm.batches.get(batch_id=batch.id)).status != "completed":
                assert batch.status in ("validating", "in_progress", "finalizing"), batch
                assert time.monotonic() < deadline, make_run.log()[-4000:]
                time.sleep(0.3)
            output = sdk.llm.files.content(file_id=batch.output_file_id).read()
        ids = sorted(json.loads(row)["custom_id"] for row in output.decode().splitlines())
        assert ids == ["line-0", "line-1", "line-2"]


def test_ctrl_c_stops_the_server_and_the_worker(make_run: MakeRun) -> None:
    make_run.interrupt()
    assert make_run.proc.returncode != 0 or "Shutting down" in make_run.log()
    # Nothing of the group is left: uvicorn and the worker (with beat) are gone.
    deadline = time.monotonic() + 30
    while True:
        try:
            os.killpg(make_run.proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, make_run.log()[-3000:]
        time.sleep(0.2)
    assert "Warm shutdown" in make_run.log() or "worker: Warm shutdown" in make_run.log()
