from __future__ import annotations

import warnings

import pytest

from tests.upstream_server import UpstreamServer


@pytest.fixture
def upstream_url(settings):
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with UpstreamServer() as server:
        yield server.url


def test_chat_smoke(world, make_model, sdk_for, openai_for, upstream_url):
    make_model(world.org_a, "acme:up", baseUrl=upstream_url + "/v1", modelId="chunks@5")
    warnings.simplefilter("ignore", DeprecationWarning)
    sdk = sdk_for(world.bob)
    res = sdk.llm.chat.create_chat(model="acme:up", messages=[{"role": "user", "content": "hi"}])
    print(res)
    assert res.model == "acme:up"
    events = list(
        sdk.llm.chat.stream(model="acme:up", messages=[{"role": "user", "content": "hi"}])
    )
    print([e.event for e in events])
    assert events[-1].event == "done"
    client = openai_for(world.bob)
    out = client.chat.completions.create(
        model="acme:up",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(out)
    print(chunks[-1])
    assert chunks[-1].usage is not None
