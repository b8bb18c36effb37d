from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from registry.cluster import (
    ClusterRegistryError,
    get_cluster_registry,
    load_registry,
    parse_registry,
)

GOOD = """
models:
  - id: op:one
    provider: openai
    modelId: one
    apiFormat: completions
    created: 1
    auth: {type: none}
    capabilities: {modalities: {input: [text], output: [text]}, reasoning: false}
auto:
  completions: op:one
"""


def test_it_loads_models_and_auto_defaults(tmp_path: Path):
    registry = parse_registry(GOOD, tmp_path / "r.yaml")
    assert list(registry.models) == ["op:one"]
    assert registry.auto == {"completions": "op:one"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models: [1]", "models[0]: the model definition must be a JSON object"),
        (
            GOOD.replace("apiFormat: completions", "apiFormat: chat"),
            "models[0] (op:one): apiFormat: must be one of",
        ),
        (
            GOOD.replace("input: [text]", "input: [smell]"),
            "models[0] (op:one): capabilities.modalities.input[0]: must be one of",
        ),
        (
            GOOD.replace("completions: op:one", "completions: op:missing"),
            "auto.completions: unknown model 'op:missing'",
        ),
        (
            GOOD.replace("completions: op:one", "tts: op:one"),
            "auto.tts: model 'op:one' has apiFormat 'completions'",
        ),
        (GOOD.replace("auto:", "extra: 1\nauto:"), "unknown top-level key(s): extra"),
        ("models: [", "not valid YAML"),
        (
            GOOD.replace("auto:", GOOD.split("models:")[1].split("auto:")[0] + "auto:"),
            "models[1] (op:one): id: 'op:one' is used twice",
        ),
    ],
)
def test_it_names_the_file_the_model_and_the_field(tmp_path: Path, text: str, expected: str):
    path = tmp_path / "bad.yaml"
    with pytest.raises(ClusterRegistryError) as info:
        parse_registry(text, path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ClusterRegistryError, match="not found"):
        load_registry(tmp_path / "nope.yaml")


def test_it_reloads_a_changed_file_and_keeps_the_last_good_one(
    tmp_path: Path, settings, monkeypatch
):
    from registry import cluster

    monkeypatch.setattr(cluster, "CHECK_INTERVAL_SECONDS", 0.0)
    path = tmp_path / "r.yaml"
    path.write_text(GOOD)
    settings.CLUSTER_REGISTRY_PATH = path
    cluster.reset_cluster_registry()
    assert list(get_cluster_registry().models) == ["op:one"]

    path.write_text(GOOD.replace("op:one", "op:two"))
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert list(get_cluster_registry().models) == ["op:two"]

    path.write_text("models: [")
    os.utime(path, (time.time() + 10, time.time() + 10))
    assert list(get_cluster_registry().models) == ["op:two"]


def test_the_shipped_example_file_is_valid():
    example = Path(__file__).resolve().parents[2] / "config" / "cluster_registry.example.yaml"
    registry = load_registry(example)
    assert registry.models and registry.auto


# --- start-up: a broken file stops the process -----------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
TWO = GOOD.replace(
    "auto:",
    """  - id: op:two
    provider: openai
    modelId: two
    apiFormat: completions
    created: 2
    auth: {type: none}
    capabilities: {modalities: {input: [text, image], output: [text]}, reasoning: false}
auto:""",
)


def start(tmp_path: Path, registry_text: str | None, *args: str) -> subprocess.CompletedProcess:
    """Run a management command in a fresh process whose CLUSTER_REGISTRY_PATH is a file in
    tmp_path holding `registry_text` (None: no file at all)."""
    path = tmp_path / "cluster.yaml"
    if registry_text is not None:
        path.write_text(registry_text)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "VAR_DIR": str(tmp_path / "var"),
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
        "DEBUG": "true",
        "CLUSTER_REGISTRY_PATH": str(path),
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


BROKEN_AT_START = [
    (
        "bad-modality",
        TWO.replace("input: [text, image]", "input: [text, smell]"),
        ["models[1] (op:two)", "capabilities.modalities.input[1]", "must be one of"],
    ),
    (
        "missing-field",
        TWO.replace("    created: 1\n", "", 1),
        ["models[0] (op:one)", "created: is required"],
    ),
    (
        "wrong-type",
        TWO.replace("modelId: two", "modelId: [two]"),
        ["models[1] (op:two)", "modelId: must be a string"],
    ),
    ("not-yaml", "models: [", ["not valid YAML"]),
    ("missing-file", None, ["cluster registry file not found"]),
]


@pytest.mark.parametrize(
    ("text", "says"), [c[1:] for c in BROKEN_AT_START], ids=[c[0] for c in BROKEN_AT_START]
)
def test_a_broken_file_stops_the_process_at_start_with_one_clear_line(
    tmp_path: Path, text: str | None, says: list[str]
):
    result = start(tmp_path, text, "check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "System check identified" not in result.stdout  # it stopped before the checks ran
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Configuration error: CLUSTER_REGISTRY_PATH "), lines[0]
    assert str(tmp_path / "cluster.yaml") in lines[0]
    for part in says:
        assert part in lines[0], lines[0]
    assert not (tmp_path / "var" / "db.sqlite3").exists()


def test_a_good_file_starts(tmp_path: Path):
    """The refusals above are about the file: the same command runs with a valid one."""
    result = start(tmp_path, TWO, "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_the_two_model_file_used_above_is_valid(tmp_path: Path):
    assert sorted(parse_registry(TWO, tmp_path / "r.yaml").models) == ["op:one", "op:two"]


# --- reload through the live API -------------------------------------------------------------


def cluster_ids(models: Any) -> list[str]:
    return sorted(m.id for m in models.list_cluster_registry().data)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def rewrite(path: Path, text: str, bump: float) -> None:
    """Replace the file's content, moving its mtime on so that the change is always seen."""
    path.write_text(text)
    moved = time.time() + bump
    os.utime(path, (moved, moved))


def test_an_edit_of_the_file_is_served_by_the_live_api_and_a_broken_one_is_not(
    tmp_path: Path, settings: Any, world: Any, sdk_for: Any, caplog: pytest.LogCaptureFixture
):
    from registry import cluster

    path = tmp_path / "cluster.yaml"
    path.write_text(GOOD)
    settings.CLUSTER_REGISTRY_PATH = path
    cluster.reset_cluster_registry()
    models = sdk_for(world.carol).llm.models
    assert cluster_ids(models) == ["op:one"]

    # A new model appears once the file changes, with no restart (the loader re-checks the
    # file at most every CHECK_INTERVAL_SECONDS).
    rewrite(path, TWO, 5)
    wait_for(lambda: cluster_ids(models) == ["op:one", "op:two"], "op:two to be listed")
    granted = models.put_cluster_registry_org_grants(org_id="org-acme", model_ids=["op:two"])
    assert granted.granted_model_ids == ["op:two"]
    alice = sdk_for(world.alice).llm.models
    assert alice.get_registry_model(id="op:two").source == "yaml"

    # A broken edit is logged and the last good file stays in force.
    caplog.set_level(logging.ERROR, logger="registry.cluster")
    rewrite(path, TWO.replace("apiFormat: completions", "apiFormat: chat"), 10)

    def refusals() -> list[str]:
        cluster_ids(models)  # a request makes the loader look at the file
        return [r.getMessage() for r in caplog.records if "not reloaded" in r.getMessage()]

    wait_for(lambda: bool(refusals()), "the broken edit to be refused")
    refused = refusals()
    assert str(path) in refused[0] and "apiFormat" in refused[0]
    assert cluster_ids(models) == ["op:one", "op:two"]
    assert alice.get_registry_model(id="op:two").source == "yaml"

    # Fixing the file is picked up again: op:two is gone, and so is it for the org.
    rewrite(path, GOOD, 15)
    wait_for(lambda: cluster_ids(models) == ["op:one"], "op:two to go away")
    assert sorted(m.id for m in alice.list_registry_models().data) == []
