"""lodestore's own erasure endpoints (Open Cloud has none): deletion templates, erasing a user, and the check after,
as raw HTTP next to the client that wrote the data."""

from __future__ import annotations

import pytest
from rblxopencloud import NotFound

from lodestore.storage import DeletionTemplate, World
from tests.storage.opencloud.conftest import serve

U = "cloud/v2/universes/1"
TEMPLATES = [{"dataStore": "players", "scope": "global", "key": "user_{UserId}"},
             {"dataStore": "inventory_{UserId}", "key": "items"}]


def test_templates_are_set_and_read_back(served):
    assert served.request("GET", f"{U}/user-data-templates").json() == {"userDataTemplates": []}
    put = served.request("PUT", f"{U}/user-data-templates", json={"userDataTemplates": TEMPLATES})
    stored = [TEMPLATES[0], {"dataStore": "inventory_{UserId}", "scope": "global", "key": "items"}]
    assert put.status_code == 200 and put.json() == {"userDataTemplates": stored}
    assert served.request("GET", f"{U}/user-data-templates").json() == {"userDataTemplates": stored}
    assert served.world.deletion_templates() == (DeletionTemplate("players", "global", "user_{UserId}"),
                                                 DeletionTemplate("inventory_{UserId}", "global", "items"))


@pytest.mark.parametrize("bad", [
    {"userDataTemplates": [{"dataStore": "players", "key": "no-token"}]},   # no {UserId} anywhere
    {"userDataTemplates": [{"dataStore": "players", "owner": "{UserId}"}]},  # unknown field
    {"userDataTemplates": [{"key": "user_{UserId}"}]},                       # no data store
    {"userDataTemplates": ["players/global/user_{UserId}"]},
    {"userDataTemplates": [{"dataStore": "p{UserId}", "key": "k"}] * 101},   # more than 100
    {"templates": TEMPLATES},
])
def test_a_bad_template_list_is_400_and_keeps_the_templates(served, bad):
    served.request("PUT", f"{U}/user-data-templates", json={"userDataTemplates": TEMPLATES[:1]})
    refused = served.request("PUT", f"{U}/user-data-templates", json=bad)
    assert refused.status_code == 400 and refused.json()["code"] == "INVALID_ARGUMENT"
    assert served.request("GET", f"{U}/user-data-templates").json() == {"userDataTemplates": TEMPLATES[:1]}


def test_erase_removes_the_users_keys_with_every_version_and_says_so(experience, served, clock):
    served.request("PUT", f"{U}/user-data-templates", json={"userDataTemplates": TEMPLATES})
    players = experience.get_datastore("players")
    for coins in (1, 2):
        players.set_entry("user_42", {"coins": coins})
        clock.advance(3600)   # two versions kept
    players.set_entry("user_43", {"coins": 9})
    experience.get_datastore("inventory_42").set_entry("items", ["sword"])
    before = served.request("GET", f"{U}/user-data:check", params={"userId": 42}).json()
    assert before["complete"] is False and len(before["remaining"]) == 2
    erased = served.request("POST", f"{U}/user-data:erase", json={"userId": 42})
    assert erased.status_code == 200
    report = erased.json()
    assert report["userId"] == 42 and report["complete"] is True and report["remaining"] == []
    removed = {(k["dataStore"], k["scope"], k["key"]): k["versions"] for k in report["removed"]}
    assert removed == {("players", "global", "user_42"): 2, ("inventory_42", "global", "items"): 1}
    with pytest.raises(NotFound):
        players.get_entry("user_42")
    assert list(players.list_versions("user_42")) == []   # no version, no tombstone
    assert players.get_entry("user_43")[0] == {"coins": 9}   # another user's data stays
    after = served.request("GET", f"{U}/user-data:check", params={"userId": "42"}).json()
    assert after == {"userId": 42, "remaining": [], "complete": True}
    again = served.request("POST", f"{U}/user-data:erase", json={"userId": "42"}).json()
    assert again["removed"] == [] and again["complete"] is True


def test_erase_refuses_what_is_not_a_user_id(served):
    for body in ({}, {"userId": True}, {"userId": "user_1"}, {"userId": 0}, {"userId": -5}):
        refused = served.request("POST", f"{U}/user-data:erase", json=body)
        assert refused.status_code == 400 and refused.json()["code"] == "INVALID_ARGUMENT", body
    assert served.request("GET", f"{U}/user-data:check").status_code == 400


def test_erasure_needs_the_manage_permission(clock):
    for served in serve(World.in_process(clock=clock, budget=None),
                        api_keys=["admin", "editor:datastores.read,datastores.write"]):
        served.request("PUT", f"{U}/user-data-templates", key="admin", json={"userDataTemplates": TEMPLATES[:1]})
        served.world.server("game").datastores.get_data_store("players").set("user_7", 1)
        for method, path, body in (("POST", "user-data:erase", {"userId": 7}), ("GET", "user-data:check", None),
                                   ("GET", "user-data-templates", None),
                                   ("PUT", "user-data-templates", {"userDataTemplates": []})):
            refused = served.request(method, f"{U}/{path}", key="editor", json=body, params={"userId": 7})
            assert refused.status_code == 403 and refused.json()["code"] == "PERMISSION_DENIED"
        assert served.world.server("game").datastores.get_data_store("players").get("user_7")[0] == 1
        assert len(served.world.deletion_templates()) == 1
