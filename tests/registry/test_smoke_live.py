from __future__ import annotations

from tests.conftest import model_body


def test_it_lists_models_through_the_sdk(world, sdk_for, make_model):
    make_model(world.org_a)
    sdk = sdk_for(world.alice)
    listed = sdk.llm.models.list()
    assert [m.id for m in listed.data] == ["acme:chat-1"]
    added = sdk.llm.models.add_registry_model(
        **{
            "id": "acme:two",
            "provider": "p",
            "model_id": "m",
            "api_format": "completions",
            "api_provider_type": "openai",
            "created": 1,
            "auth": {"type": "none"},
            "capabilities": {
                "modalities": {"input": ["text"], "output": ["text"]},
                "reasoning": False,
            },
        }
    )
    assert added.source == "database"
    assert model_body()["id"] == "acme:chat-1"
