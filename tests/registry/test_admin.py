from __future__ import annotations

from tests.conftest import SECRET


def test_admin_pages_never_show_a_provider_secret(world, make_model, admin_client):
    model = make_model(world.org_a, auth={"type": "custom-headers", "headers": {"X-Key": SECRET}})
    pages = [
        "/admin/",
        "/admin/registry/registrymodel/",
        f"/admin/registry/registrymodel/{model.pk}/change/",
        "/admin/registry/registrymodel/cluster-registry/",
        "/admin/orgs/apikey/",
        f"/admin/orgs/apikey/{world.alice.key.pk}/change/",
        "/admin/orgs/auditevent/",
    ]
    for url in pages:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        body = response.content.decode()
        assert SECRET not in body, url
        assert "sk-canary-cluster-secret" not in body, url
        assert world.alice.token not in body, url
        assert world.alice.key.key_hash not in body, url
    cluster_page = admin_client.get(
        "/admin/registry/registrymodel/cluster-registry/"
    ).content.decode()
    assert "cluster:chat-a" in cluster_page and "********" in cluster_page


def test_admin_cannot_edit_an_org_model_in_place(world, make_model, admin_client):
    model = make_model(world.org_a)
    url = f"/admin/registry/registrymodel/{model.pk}/change/"
    response = admin_client.post(url, {"hidden": "on"})
    assert response.status_code == 403
    model.refresh_from_db()
    assert model.hidden is False
