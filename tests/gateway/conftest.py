"""Gateway fixtures: the stand-in upstream, org models pointing at it, and clean gateway state.

`upstream` is the OpenAI-compatible server of `tests.upstream_server` on loopback; `gw_model`
registers an org model whose `baseUrl` is that server and whose `modelId` chooses its behaviour
(`chunks@5`, `echo`, `no-usage`, `fault-5xx`...).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.upstream_server import UpstreamServer

HERE = Path(__file__).parent

# meetkai-mka1 marks `llm.chat.create_chat` and `llm.chat.stream` as deprecated (typing
# `@deprecated`), and the warning is attributed to the calling test module.
DEPRECATED_CHAT = "ignore:.*DEPRECATED.*:DeprecationWarning"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.filterwarnings(DEPRECATED_CHAT))


@pytest.fixture(autouse=True)
def _gateway_state() -> Iterator[None]:
    """Fresh stream sessions and rate-limit windows around every test (the usage buffer is
    handled by tests/conftest.py)."""
    from gateway import limits, sessions

    sessions.reset()
    limits.reset_local()
    yield
    sessions.reset()
    limits.reset_local()


@pytest.fixture
def upstream(settings: Any) -> Iterator[UpstreamServer]:
    """The stand-in provider; loopback is allowed as an upstream network for the test."""
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with UpstreamServer() as server:
        yield server


@pytest.fixture
def gw_model(make_model: Callable[..., Any], upstream: UpstreamServer) -> Callable[..., Any]:
    """`gw_model(org, id, upstream_model="chunks@5", **camelCaseOverrides)`: an org model served
    by the stand-in upstream."""

    def make(org: Any, model_id: str, upstream_model: str = "chunks@5", **overrides: Any) -> Any:
        fields: dict[str, Any] = {"baseUrl": upstream.url + "/v1", "modelId": upstream_model}
        fields.update(overrides)
        return make_model(org, model_id, **fields)

    return make


CLUSTER_MODEL = """\
  - id: {id}
    provider: openai
    modelId: {model}
    apiFormat: completions
    apiProviderType: openai
    created: 1704067200
    baseUrl: {url}/v1
    auth: {{type: none}}
    capabilities:
      modalities: {{input: [text], output: [text]}}
      reasoning: false
"""


@pytest.fixture
def upstream_cluster(settings: Any, tmp_path: Path, upstream: UpstreamServer) -> list[str]:
    """An operator YAML whose models live on the stand-in upstream: `op:chat` (`chunks@2`, the
    completions auto default) and `op:chat-b` (`chunks@3`). Nothing is granted yet."""
    from registry.cluster import reset_cluster_registry

    models = {"op:chat": "chunks@2", "op:chat-b": "chunks@3"}
    text = "models:\n"
    text += "".join(
        CLUSTER_MODEL.format(id=mid, model=name, url=upstream.url) for mid, name in models.items()
    )
    text += "auto:\n  completions: op:chat\n"
    path = tmp_path / "cluster_registry.yaml"
    path.write_text(text)
    settings.CLUSTER_REGISTRY_PATH = path
    reset_cluster_registry()
    return list(models)


@pytest.fixture
def usage_rows() -> Callable[..., list[Any]]:
    """`usage_rows(count, **filters)`: the UsageRecords matching `filters`, oldest first, once
    at least `count` exist (records are buffered and written off the request path)."""
    from gateway import usage
    from gateway.models import UsageRecord

    def rows(count: int = 1, timeout: float = 5.0, **filters: Any) -> list[Any]:
        deadline = time.monotonic() + timeout
        while True:
            usage.flush()
            found = list(UsageRecord.objects.filter(**filters).order_by("id"))
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    return rows


def chat_requests(server: UpstreamServer) -> list[dict[str, Any]]:
    """The chat-completion requests the upstream received, oldest first."""
    return [r for r in server.requests() if r["path"].endswith("/chat/completions")]


def user(text: str = "hi") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def answer(chunks: int) -> str:
    return "".join(f"tok{i} " for i in range(chunks))
