"""Sign-in and out, the start page and the org switcher."""

from __future__ import annotations

from tests.dashboard.conftest import PASSWORD


def test_the_login_page_renders(db, login):
    response = login().get("/login")
    assert response.status_code == 200
    assert b"<html" in response.content
    assert b'name="password"' in response.content


def test_it_signs_in_and_goes_to_the_current_orgs_models(people, login):
    client = login()
    response = client.post("/login", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert client.get("/")["Location"] == "/orgs/org-acme/models"


def test_a_wrong_password_shows_an_error(people, login):
    response = login().post("/login", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content


def test_it_follows_a_safe_next(people, login):
    response = login().post(
        "/login?next=/orgs/org-acme/health",
        {"username": "alice", "password": PASSWORD, "next": "/orgs/org-acme/health"},
    )
    assert response["Location"] == "/orgs/org-acme/health"


def test_it_ignores_an_offsite_next(people, login):
    for evil in (
        "https://evil.example/",
        "//evil.example/x",
        "https:evil.example",
        "/\\evil.example",
    ):
        response = login().post("/login", {"username": "alice", "password": PASSWORD, "next": evil})
        assert response.status_code == 302
        assert response["Location"] == "/", evil


def test_the_login_form_needs_a_csrf_token(people, login):
    client = login(enforce_csrf_checks=True)
    response = client.post("/login", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 403


def test_logout_is_post_only(people, login):
    client = login(people.alice)
    assert client.get("/logout").status_code == 405
    response = client.post("/logout")
    assert response.status_code == 302
    assert response["Location"] == "/login"
    assert client.get("/orgs/org-acme/models").status_code == 302


def test_home_needs_a_login(db, login):
    response = login().get("/")
    assert response.status_code == 302
    assert response["Location"] == "/login?next=/"


def test_home_says_so_when_the_user_has_no_org(people, login):
    response = login(people.nobody).get("/")
    assert response.status_code == 200
    assert b"No organisation yet" in response.content


def test_home_goes_to_the_org_last_opened(people, login):
    client = login(people.root)
    assert client.get("/")["Location"] == "/orgs/org-acme/models"  # the first org
    client.get("/orgs/org-globex/auto")
    assert client.get("/")["Location"] == "/orgs/org-globex/models"


def test_home_forgets_an_org_the_user_left(people, login):
    from orgs.models import Membership, Role

    Membership.objects.create(user=people.bob, org=people.org_b, role=Role.MEMBER)
    client = login(people.bob)
    client.get("/orgs/org-globex/models")
    Membership.objects.filter(user=people.bob, org=people.org_b).delete()
    assert client.get("/")["Location"] == "/orgs/org-acme/models"


def test_the_switcher_lists_only_the_users_orgs(people, login):
    body = login(people.alice).get("/orgs/org-acme/models").content.decode()
    assert 'value="org-acme" selected' in body
    assert "org-globex" not in body
    everything = login(people.root).get("/orgs/org-acme/models").content.decode()
    assert 'value="org-globex"' in everything


def test_switching_keeps_the_kind_of_page(people, login):
    client = login(people.root)
    response = client.get("/switch-org", {"org": "org-globex", "section": "health"})
    assert response["Location"] == "/orgs/org-globex/health"
    response = client.get("/switch-org", {"org": "org-globex", "section": "bogus"})
    assert response["Location"] == "/orgs/org-globex/models"
    # A section whose page does not exist yet falls back to the models page.
    response = client.get("/switch-org", {"org": "org-globex", "section": "playground"})
    assert response.status_code == 302


def test_switching_to_an_org_of_someone_else_is_404(people, login):
    assert login(people.alice).get("/switch-org", {"org": "org-globex"}).status_code == 404
    assert login(people.alice).get("/switch-org").status_code == 404


def test_the_nav_shows_what_the_user_may_use(people, login):
    admin_nav = login(people.alice).get("/orgs/org-acme/models").content.decode()
    assert 'href="/orgs/org-acme/keys"' in admin_nav
    assert 'href="/grants"' not in admin_nav
    assert 'href="/admin/"' not in admin_nav
    member_nav = login(people.bob).get("/orgs/org-acme/models").content.decode()
    assert 'href="/orgs/org-acme/keys"' not in member_nav
    assert 'href="/orgs/org-acme/health"' in member_nav
    root_nav = login(people.root).get("/orgs/org-acme/models").content.decode()
    assert 'href="/grants"' in root_nav
    assert 'href="/admin/"' in root_nav
    # Pages that another part of the project adds show as placeholders until they exist.
    assert "Playground" in root_nav


def test_404_and_403_pages_are_dashboard_pages(people, login):
    response = login(people.alice).get("/orgs/org-globex/models")
    assert response.status_code == 404
    assert b"<html" in response.content
    assert b"data-error-message" in response.content
    response = login(people.bob).get("/orgs/org-acme/keys")
    assert response.status_code == 403
    assert b"data-error-message" in response.content
