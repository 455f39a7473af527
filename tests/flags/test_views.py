"""The flags dashboard: the list with its filters, toggle and kill, the flag page and its
editors, the rule editor, segments and evaluation keys; htmx partials and errors by the field."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.test import Client

from flags import services
from flags.models import EvaluationKey, Flag, Segment

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
REGEX = {"attribute": "a", "operator": "regex", "values": ["(a+)+$"]}


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def web(engineer: Any) -> Client:
    return client_for(engineer)


def html_of(response: Any) -> str:
    return response.content.decode()


# --- the list -----------------------------------------------------------------------------------


def test_list__shows_flags_with_status_rollout_tags_and_stale(web, make_flag):
    from datetime import date

    make_flag(
        "new-checkout",
        tags=["checkout"],
        default_rule={"rollout": {"percentage": 10, "variant": "on"}},
    )
    make_flag("old-banner", expires_on=date(2020, 1, 1))

    html = html_of(web.get("/flags/"))

    assert "new-checkout" in html and "old-banner" in html
    assert "10%" in html
    assert 'href="/flags/?tag=checkout"' in html
    assert html.count(">stale</span>") == 1
    assert 'role="switch"' in html
    assert "cdn" not in html.lower()


def test_list__filters__over_htmx_render_only_the_table(web, make_flag):
    make_flag("new-checkout", tags=["checkout"])
    make_flag("search-v2", status="disabled")

    response = web.get("/flags/?status=disabled", HTTP_HX_TARGET="flag-table", **HTMX)

    html = html_of(response)
    assert html.lstrip().startswith('<div id="flag-table"')
    assert "search-v2" in html and "new-checkout" not in html


def test_list__toggle__asks_for_confirmation_then_switches(web, make_flag):
    flag = make_flag()

    confirm = html_of(web.get(f"/flags/{flag.key}/toggle/"))
    assert "Disable new-checkout?" in confirm
    assert 'hx-confirm="Disable new-checkout?' in html_of(web.get("/flags/"))

    response = web.post(
        f"/flags/{flag.key}/toggle/",
        {"to": "disabled"},
        HTTP_HX_TARGET=f"flag-row-{flag.pk}",
        **HTMX,
    )

    assert html_of(response).lstrip().startswith(f'<tr id="flag-row-{flag.pk}"')
    assert Flag.objects.get().status == "disabled"


def test_toggle__without_javascript__redirects_to_the_flag(web, make_flag):
    flag = make_flag()

    response = web.post(f"/flags/{flag.key}/toggle/", {"to": "disabled"})

    assert response.status_code == 302
    assert response["Location"] == "/flags/new-checkout/"


def test_kill__from_the_list_without_a_reason__is_400_and_kills_nothing(web, make_flag):
    flag = make_flag()

    response = web.post(
        f"/flags/{flag.key}/kill/",
        {"kill-reason": ""},
        HTTP_HX_TARGET=f"flag-row-{flag.pk}",
        **HTMX,
    )

    assert response.status_code == 400
    assert Flag.objects.get().status == "enabled"


def test_kill__from_the_flag_page__kills_and_shows_the_reason(web, make_flag):
    make_flag()

    response = web.post("/flags/new-checkout/kill/", {"kill-reason": "errors spiked"}, **HTMX)

    html = html_of(response)
    assert html.lstrip().startswith('<div id="flag-page"')
    assert "errors spiked" in html
    assert Flag.objects.get().status == "killed"


def test_kill__without_a_reason__shows_the_error_next_to_the_field(web, make_flag):
    make_flag()

    response = web.post("/flags/new-checkout/kill/", {"kill-reason": ""})

    assert response.status_code == 400
    assert 'id="id_kill-reason-error"' in html_of(response)


# --- creating and editing -----------------------------------------------------------------------


def test_create__makes_a_disabled_flag_and_goes_to_its_page(web):
    response = web.post(
        "/flags/-/new/",
        {
            "key": "new-checkout",
            "flag_type": "release",
            "value_type": "boolean",
            "tags": "checkout, q3",
        },
    )

    assert response.status_code == 302
    flag = Flag.objects.get()
    assert (flag.status, flag.tags) == ("disabled", ["checkout", "q3"])


def test_create__with_bad_input__is_400_with_the_errors_next_to_the_fields(web, make_flag):
    make_flag("taken")

    duplicate = web.post(
        "/flags/-/new/", {"key": "taken", "flag_type": "release", "value_type": "boolean"}
    )
    bad_variants = web.post(
        "/flags/-/new/",
        {"key": "x", "flag_type": "release", "value_type": "number", "variants": "a = ten"},
    )

    assert duplicate.status_code == 400 and 'id="id_key-error"' in html_of(duplicate)
    assert bad_variants.status_code == 400 and 'id="id_variants-error"' in html_of(bad_variants)


def test_flag_page__shows_every_panel_and_the_history(web, make_flag, engineer):
    services.flag_update(flag=make_flag(), changes={"name": "New checkout"}, actor=engineer)

    html = html_of(web.get("/flags/new-checkout/"))

    for region in [
        "default-panel",
        "rules-panel",
        "targets-panel",
        "try-panel",
        "exposure-panel",
        "variants-panel",
        "details-panel",
        "history-panel",
    ]:
        assert f'id="{region}"' in html
    assert 'data-plot-for="exposure-chart-' in html
    assert "New checkout" in html


def test_flag_page__of_an_unknown_flag__is_404(web):
    assert web.get("/flags/ghost/").status_code == 404


def test_rollout_slider__sets_the_percentage(web, make_flag):
    make_flag(default_rule={"variant": "off"})

    response = web.post("/flags/new-checkout/rollout/", {"rollout-percentage": "10"}, **HTMX)

    assert response.status_code == 200
    assert Flag.objects.get().default_rule == {"rollout": {"percentage": 10.0, "variant": "on"}}


def test_rollout_slider__out_of_range__is_400_next_to_the_field(web, make_flag):
    make_flag()

    response = web.post("/flags/new-checkout/rollout/", {"rollout-percentage": "150"}, **HTMX)

    assert response.status_code == 400
    assert 'id="id_rollout-percentage-error"' in html_of(response)


def test_default_rule__variant_weights_that_do_not_sum_to_100__are_400_next_to_a_weight(
    web, make_flag
):
    make_flag()

    response = web.post(
        "/flags/new-checkout/default-rule/",
        {"default-serve_kind": "split", "default-weight_0": "60", "default-weight_1": "30"},
        **HTMX,
    )

    assert response.status_code == 400
    assert "weights must sum to 100" in html_of(response)


def test_default_rule__a_split__is_saved(web, make_flag):
    make_flag()

    web.post(
        "/flags/new-checkout/default-rule/",
        {"default-serve_kind": "split", "default-weight_0": "25", "default-weight_1": "75"},
    )

    assert Flag.objects.get().default_rule == {
        "split": [{"variant": "on", "weight": 25}, {"variant": "off", "weight": 75}]
    }


def test_variants__of_the_wrong_type__are_400_next_to_the_field(web, make_flag):
    make_flag()

    response = web.post(
        "/flags/new-checkout/variants/",
        {
            "variants-value_type": "boolean",
            "variants-variants": "on = 1\noff = false",
            "variants-off_variant": "off",
        },
    )

    assert response.status_code == 400
    assert 'id="id_variants-variants-error"' in html_of(response)


def test_targets__are_saved_per_variant(web, make_flag):
    make_flag()

    web.post(
        "/flags/new-checkout/targets/",
        {"targets-variant_0": "alice, bob", "targets-variant_1": "mallory"},
    )

    assert Flag.objects.get().targets == [
        {"variant": "on", "values": ["alice", "bob"]},
        {"variant": "off", "values": ["mallory"]},
    ]


def test_try__shows_the_result_and_why(web, make_flag):
    make_flag()

    response = web.post(
        "/flags/new-checkout/try/",
        {"try-targeting_key": "u1", "try-attributes": '{"country": "NL"}'},
        **HTMX,
    )

    html = html_of(response)
    assert html.lstrip().startswith('<section id="try-panel"')
    assert "STATIC" in html
    assert "Served variant" in html


def test_try__with_attributes_that_are_not_an_object__is_400_next_to_the_field(web, make_flag):
    make_flag()

    response = web.post("/flags/new-checkout/try/", {"try-attributes": "[1]"}, **HTMX)

    assert response.status_code == 400
    assert 'id="id_try-attributes-error"' in html_of(response)


def test_exposures__partial_polls_and_switches_windows(web, make_flag):
    make_flag()

    html = html_of(web.get("/flags/new-checkout/exposures/?window=24h", **HTMX))

    assert html.lstrip().startswith('<section id="exposure-panel"')
    assert 'hx-trigger="every 10s"' in html
    assert "window=24h" in html


# --- the rule editor ----------------------------------------------------------------------------


def rule_post(**overrides: str) -> dict[str, str]:
    data = {
        "rule-name": "beta testers",
        "rule-segments": "beta",
        "constraints-TOTAL_FORMS": "1",
        "constraints-INITIAL_FORMS": "0",
        "constraints-0-attribute": "plan",
        "constraints-0-operator": "in",
        "constraints-0-values": "pro, team",
        "rule-serve_kind": "rollout",
        "rule-rollout_percentage": "10",
        "rule-rollout_variant": "on",
        "rule-version": "1",
        "save": "1",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def test_rule_editor__adds_a_segment_rule_with_a_rollout(web, make_flag, make_segment):
    make_segment("beta")
    make_flag()

    response = web.post("/flags/new-checkout/rules/new/", rule_post())

    assert response.status_code == 302
    assert Flag.objects.get().rules == [
        {
            "name": "beta testers",
            "segments": ["beta"],
            "constraints": [
                {
                    "attribute": "plan",
                    "operator": "in",
                    "values": ["pro", "team"],
                    "case_insensitive": False,
                    "negate": False,
                }
            ],
            "serve": {"rollout": {"percentage": 10, "variant": "on"}},
        }
    ]


def test_rule_editor__invalid_regex__is_400_next_to_the_constraints_values(web, make_flag):
    make_flag()

    response = web.post(
        "/flags/new-checkout/rules/new/",
        rule_post(
            **{
                "rule-segments": None,
                "constraints-0-operator": "regex",
                "constraints-0-values": "(a+)+$",
            }
        ),
    )

    assert response.status_code == 400
    assert 'id="id_constraints-0-values-error"' in html_of(response)
    assert Flag.objects.get().rules == []


def test_rule_editor__add_constraint__adds_a_row_and_keeps_what_was_typed(web, make_flag):
    make_flag()

    response = web.post("/flags/new-checkout/rules/new/", rule_post(save=None, add_constraint="1"))

    html = html_of(response)
    assert response.status_code == 200
    assert 'name="constraints-1-attribute"' in html
    assert 'value="pro, team"' in html
    assert Flag.objects.get().rules == []


def test_rule_editor__edits_moves_and_deletes_rules(web, make_flag):
    make_flag(
        rules=[
            {"name": "a", "serve": {"variant": "on"}},
            {"name": "b", "serve": {"variant": "off"}},
        ]
    )

    editor = html_of(web.get("/flags/new-checkout/rules/0/"))
    assert 'value="a"' in editor
    assert 'name="rule-version" value="1"' in editor
    assert 'name="version" value="1"' in html_of(web.get("/flags/new-checkout/"))
    web.post("/flags/new-checkout/rules/1/change/", {"operation": "up", "version": "1"})
    assert [rule["name"] for rule in Flag.objects.get().rules] == ["b", "a"]
    web.post("/flags/new-checkout/rules/0/change/", {"operation": "delete", "version": "2"})
    assert [rule["name"] for rule in Flag.objects.get().rules] == ["a"]


def test_rule_editor__save_against_rules_changed_since_the_page_opened__is_409_and_keeps_both(
    web, make_flag
):
    flag = make_flag(
        rules=[
            {"name": "a", "serve": {"variant": "on"}},
            {"name": "b", "serve": {"variant": "off"}},
        ]
    )
    web.get("/flags/new-checkout/rules/1/")  # the page opens at version 1
    services.flag_rule_delete(flag=flag, index=0, expected_version=1)  # someone else, meanwhile

    response = web.post(
        "/flags/new-checkout/rules/1/",
        rule_post(**{"rule-name": "b2", "rule-segments": None, "constraints-0-attribute": ""}),
    )

    html = html_of(response)
    assert response.status_code == 409
    assert "has changed since version 1" in html
    assert 'value="b2"' in html  # what was typed is kept
    assert [rule["name"] for rule in Flag.objects.get().rules] == ["b"]


def test_rule_change__move_or_delete_from_a_stale_page__changes_nothing_and_says_why(
    web, make_flag
):
    flag = make_flag(
        rules=[
            {"name": "a", "serve": {"variant": "on"}},
            {"name": "b", "serve": {"variant": "off"}},
        ]
    )
    services.flag_rule_add(flag=flag, rule={"name": "c", "serve": {"variant": "on"}})

    moved = web.post("/flags/new-checkout/rules/1/change/", {"operation": "up", "version": "1"})
    deleted = web.post(
        "/flags/new-checkout/rules/0/change/", {"operation": "delete", "version": "1"}, follow=True
    )

    assert moved.status_code == 302
    assert "has changed since version 1" in html_of(deleted)
    assert [rule["name"] for rule in Flag.objects.get().rules] == ["a", "b", "c"]


def test_rule_change__without_the_pages_version__changes_nothing(web, make_flag):
    make_flag(rules=[{"name": "a", "serve": {"variant": "on"}}])

    response = web.post("/flags/new-checkout/rules/0/change/", {"operation": "delete"}, follow=True)

    assert "out of date" in html_of(response)
    assert [rule["name"] for rule in Flag.objects.get().rules] == ["a"]


def test_rule_editor__of_a_rule_that_does_not_exist__is_404(web, make_flag):
    make_flag()

    assert web.get("/flags/new-checkout/rules/5/").status_code == 404


# --- segments and keys --------------------------------------------------------------------------


def test_segment_pages__create_list_and_edit(web):
    created = web.post(
        "/flags/-/segments/new/",
        {
            "key": "beta",
            "name": "Beta",
            "constraints-TOTAL_FORMS": "1",
            "constraints-INITIAL_FORMS": "0",
            "constraints-0-attribute": "country",
            "constraints-0-operator": "in",
            "constraints-0-values": "NL, BE",
            "save": "1",
        },
    )

    assert created.status_code == 302
    assert Segment.objects.get().constraints[0]["values"] == ["NL", "BE"]
    assert "country in NL, BE" in html_of(web.get("/flags/-/segments/"))
    assert 'value="NL, BE"' in html_of(web.get("/flags/-/segments/beta/"))


def test_segment_page__bad_number__is_400_next_to_the_value(web):
    response = web.post(
        "/flags/-/segments/new/",
        {
            "key": "old",
            "constraints-TOTAL_FORMS": "1",
            "constraints-INITIAL_FORMS": "0",
            "constraints-0-attribute": "age",
            "constraints-0-operator": "num_gt",
            "constraints-0-values": "very",
            "save": "1",
        },
    )

    assert response.status_code == 400
    assert 'id="id_constraints-0-values-error"' in html_of(response)


def test_keys_page__shows_a_new_secret_once_and_revokes(web):
    created = html_of(web.post("/flags/-/keys/", {"name": "checkout-service"}, **HTMX))
    key = EvaluationKey.objects.get()

    secret = re.search(r'data-testid="new-key-secret">([^<]+)<', created).group(1)
    assert secret.startswith(key.prefix)
    assert "new-key-secret" not in html_of(web.get("/flags/-/keys/"))

    web.post(f"/flags/-/keys/{key.pk}/revoke/")
    assert EvaluationKey.objects.get().revoked_at is not None


def test_keys_page__without_a_name__is_400_next_to_the_field(web):
    response = web.post("/flags/-/keys/", {"name": ""})

    assert response.status_code == 400
    assert 'id="id_name-error"' in html_of(response)


# --- roles --------------------------------------------------------------------------------------


def test_viewer__sees_the_pages_without_the_controls(viewer, make_flag):
    make_flag()
    client = client_for(viewer)

    page = html_of(client.get("/flags/new-checkout/"))

    assert "Emergency disable" not in page
    assert 'role="switch"' not in html_of(client.get("/flags/"))
    assert client.get("/flags/-/segments/").status_code == 200
    assert client.get("/flags/-/keys/").status_code == 200


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/flags/new-checkout/toggle/", {"to": "disabled"}),
        ("/flags/new-checkout/kill/", {"kill-reason": "x"}),
        ("/flags/new-checkout/rollout/", {"rollout-percentage": "5"}),
        ("/flags/new-checkout/details/", {}),
        ("/flags/-/new/", {"key": "x"}),
        ("/flags/-/segments/new/", {"key": "s"}),
        ("/flags/-/keys/", {"name": "k"}),
    ],
)
def test_viewer__cannot_change_anything(viewer, make_flag, path, data):
    make_flag()

    response = client_for(viewer).post(path, data)

    assert response.status_code == 403
    assert Flag.objects.get().status == "enabled"
    assert not EvaluationKey.objects.exists()


def test_anonymous__is_sent_to_log_in():
    response = Client().get("/flags/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


# --- admin --------------------------------------------------------------------------------------


def test_admin__saves_through_the_services_and_names_bad_fields(make_user):
    admin = make_user("root", roles=["admin"])
    admin.is_superuser = True
    admin.save()
    client = client_for(admin)
    form = {
        "key": "from-admin",
        "name": "",
        "description": "",
        "flag_type": "release",
        "value_type": "boolean",
        "variants": '[{"name": "on", "value": true}, {"name": "off", "value": false}]',
        "off_variant": "off",
        "rules": json.dumps([{"constraints": [REGEX], "serve": {"variant": "on"}}]),
        "default_rule": '{"variant": "on"}',
        "targets": "[]",
        "stickiness": "targetingKey",
        "salt": "",
        "expires_on": "",
        "owner": "",
        "tags": "[]",
    }

    refused = client.post("/admin/flags/flag/add/", form)
    assert refused.status_code == 200
    assert "rules[0].constraints[0].values[0]" in html_of(refused)

    saved = client.post("/admin/flags/flag/add/", {**form, "rules": "[]"})
    assert saved.status_code == 302
    flag = Flag.objects.get()
    assert (flag.key, flag.salt, flag.version) == ("from-admin", "from-admin", 1)

    client.post(
        "/admin/flags/flag/",
        {
            "action": "kill_flags",
            "_selected_action": [flag.pk],
            "apply": "1",
            "reason": "admin kill",
        },
    )
    assert Flag.objects.get().status == "killed"
