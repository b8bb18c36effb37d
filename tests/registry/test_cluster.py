from __future__ import annotations

import os
import time
from pathlib import Path

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
