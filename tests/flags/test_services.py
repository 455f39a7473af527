"""Flag, segment and evaluation key services: validation naming the field, versions, the shared
flags version, the audit trail, and the verbs' transitions."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from canary_site.exceptions import (
    CanaryError,
    Conflict,
    NotFound,
    TransitionNotAllowed,
    ValidationFailed,
)
from canary_site.models import AuditEntry
from canary_site.selectors import audit_entries_for
from flags import services, snapshot
from flags.models import EvaluationKey, Flag, FlagExposure
from flags.snapshot import read_version
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db

ROLLOUT_RULE = {
    "name": "beta testers",
    "segments": ["beta"],
    "constraints": [{"attribute": "plan", "operator": "in", "values": ["pro"]}],
    "serve": {"rollout": {"percentage": 10, "variant": "on"}},
}


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


DEEP = {"a": _nested(40)}


def field_of(error: pytest.ExceptionInfo[ValidationFailed]) -> str:
    return next(iter(error.value.fields))


def test_flag_create__boolean_without_variants__gets_on_and_off_and_serves_on_when_enabled():
    flag = services.flag_create(key="new-checkout", status="enabled")

    assert [v["name"] for v in flag.variants] == ["on", "off"]
    assert flag.off_variant == "off"
    assert flag.default_rule == {"variant": "on"}
    assert flag.salt == "new-checkout"
    assert flag.version == 1


def test_flag_create__is_disabled_unless_asked_otherwise():
    assert services.flag_create(key="quiet").status == "disabled"


def test_flag_create__with_a_duplicate_key__names_the_key(make_flag):
    make_flag("new-checkout")

    with pytest.raises(ValidationFailed) as error:
        services.flag_create(key="new-checkout")

    assert field_of(error) == "key"


@pytest.mark.parametrize("key", ["", "has space", "-leading-dash", "ünïcode", "x" * 101])
def test_flag_create__with_a_bad_key__names_the_key(key):
    with pytest.raises(ValidationFailed) as error:
        services.flag_create(key=key)

    assert field_of(error) == "key"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        (
            {
                "rules": [
                    {
                        "constraints": [{"attribute": "a", "operator": "nope", "values": ["x"]}],
                        "serve": {"variant": "on"},
                    }
                ]
            },
            "rules[0].constraints[0].operator",
        ),
        (
            {
                "rules": [
                    {
                        "constraints": [
                            {"attribute": "a", "operator": "regex", "values": ["(a+)+$"]}
                        ],
                        "serve": {"variant": "on"},
                    }
                ]
            },
            "rules[0].constraints[0].values[0]",
        ),
        (
            {
                "rules": [
                    {
                        "constraints": [
                            {"attribute": "a", "operator": "regex", "values": ["([a-z"]}
                        ],
                        "serve": {"variant": "on"},
                    }
                ]
            },
            "rules[0].constraints[0].values[0]",
        ),
        (
            {
                "default_rule": {
                    "split": [{"variant": "on", "weight": 50}, {"variant": "off", "weight": 40}]
                }
            },
            "default_rule.split",
        ),
        (
            {
                "default_rule": {
                    "split": [
                        {"variant": "on", "weight": 50.555},
                        {"variant": "off", "weight": 49.445},
                    ]
                }
            },
            "default_rule.split[0].weight",
        ),
        (
            {
                "variants": [{"name": "on", "value": True}, {"name": "on", "value": False}],
                "off_variant": "on",
            },
            "variants[1].name",
        ),
        (
            {
                "variants": [{"name": "on", "value": 1}, {"name": "off", "value": False}],
                "off_variant": "off",
            },
            "variants[0].value",
        ),
        (
            {"default_rule": {"rollout": {"percentage": 101, "variant": "on"}}},
            "default_rule.rollout.percentage",
        ),
        (
            {"rules": [{"segments": ["missing"], "serve": {"variant": "on"}}]},
            "rules[0].segments[0]",
        ),
        ({"targets": [{"variant": "nope", "values": ["alice"]}]}, "targets[0].variant"),
        ({"tags": ["Has Space"]}, "tags[0]"),
        (
            {"variants": [{"name": "on", "value": DEEP}, {"name": "off", "value": False}]},
            "variants",
        ),
    ],
)
def test_flag_create__with_a_bad_definition__names_the_engines_field(fields, field):
    with pytest.raises(ValidationFailed) as error:
        services.flag_create(key="bad", **fields)

    assert field_of(error) == field
    assert not Flag.objects.filter(key="bad").exists()


def test_flag_create__of_a_string_flag__takes_its_variants_and_the_first_as_off():
    flag = services.flag_create(
        key="button-colour",
        value_type="string",
        variants=[{"name": "grey", "value": "#888"}, {"name": "blue", "value": "#00f"}],
        default_rule={
            "split": [{"variant": "grey", "weight": 50}, {"variant": "blue", "weight": 50}]
        },
    )

    assert flag.off_variant == "grey"


def test_flag_update__bumps_the_version_and_the_shared_version__and_records_the_diff(
    make_flag, engineer
):
    flag = make_flag()
    before = read_version()

    updated = services.flag_update(
        flag=flag, changes={"name": "New checkout"}, actor=engineer, source="api", reason="rename"
    )

    assert updated.version == 2
    assert read_version() != before
    entry = audit_entries_for(obj=flag).first()
    assert entry.changes["name"] == ["", "New checkout"]
    assert (entry.actor, entry.source, entry.reason) == (engineer, "api", "rename")


def test_flag_update__that_changes_nothing__keeps_the_version(make_flag):
    flag = make_flag(name="Same")

    assert services.flag_update(flag=flag, changes={"name": "Same"}).version == 1


def test_flag_update__telling_true_from_one__is_a_change_of_type(make_flag):
    flag = make_flag()

    with pytest.raises(ValidationFailed) as error:
        services.flag_update(
            flag=flag,
            changes={"variants": [{"name": "on", "value": 1}, {"name": "off", "value": False}]},
        )

    assert field_of(error) == "variants[0].value"


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"key": "other"}, "key"), ({"status": "enabled"}, "status"), ({"version": 9}, "version")],
)
def test_flag_update__of_key_status_or_bookkeeping__is_refused_naming_it(make_flag, changes, field):
    with pytest.raises(ValidationFailed) as error:
        services.flag_update(flag=make_flag(), changes=changes)

    assert field_of(error) == field


def test_flag_kill__needs_a_reason(make_flag):
    with pytest.raises(ValidationFailed) as error:
        services.flag_kill(flag=make_flag(), reason="  ")

    assert field_of(error) == "reason"


def test_flag_kill__serves_off__keeps_the_reason__and_audits_the_verb(make_flag, engineer):
    flag = services.flag_kill(flag=make_flag(), reason="checkout errors", actor=engineer)

    assert flag.status == "killed"
    assert flag.killed_reason == "checkout errors"
    assert flag.killed_at is not None
    entry = AuditEntry.objects.filter(verb="kill").get()
    assert entry.reason == "checkout errors"
    assert entry.changes["status"] == ["enabled", "killed"]


def test_flag_kill__twice__changes_nothing_the_second_time(make_flag):
    flag = services.flag_kill(flag=make_flag(), reason="first")

    again = services.flag_kill(flag=flag, reason="second")

    assert (again.version, again.killed_reason) == (flag.version, "first")


def test_flag_disable__of_a_killed_flag__is_refused(make_flag):
    flag = services.flag_kill(flag=make_flag(), reason="boom")

    with pytest.raises(TransitionNotAllowed):
        services.flag_disable(flag=flag)


def test_flag_enable__of_a_killed_flag__recovers_it_and_clears_the_kill(make_flag):
    flag = services.flag_kill(flag=make_flag(), reason="boom")

    flag = services.flag_enable(flag=flag)

    assert (flag.status, flag.killed_reason, flag.killed_at) == ("enabled", "", None)


def test_flag_set_rollout__makes_the_default_rule_a_rollout_of_the_on_variant(make_flag):
    flag = make_flag(default_rule={"variant": "off"})

    flag = services.flag_set_rollout(flag=flag, percentage=25)

    assert flag.default_rule == {"rollout": {"percentage": 25.0, "variant": "on"}}
    assert flag.version == 2


@pytest.mark.parametrize("percentage", [-1, 100.01, 12.345, "ten", True, None])
def test_flag_set_rollout__with_a_bad_percentage__names_it(make_flag, percentage):
    with pytest.raises(ValidationFailed) as error:
        services.flag_set_rollout(flag=make_flag(), percentage=percentage)

    assert field_of(error) == "percentage"


def test_flag_set_rollout__with_an_unknown_variant__names_the_variant(make_flag):
    with pytest.raises(ValidationFailed) as error:
        services.flag_set_rollout(flag=make_flag(), percentage=5, variant="nope")

    assert field_of(error) == "variant"


def test_flag_set_rollout__by_a_deployment__takes_control__and_refuses_anyone_else(make_flag):
    flag = services.flag_set_rollout(flag=make_flag(), percentage=5, controlled_by="deployment 12")

    assert flag.controlled_by == "deployment 12"
    with pytest.raises(TransitionNotAllowed):
        services.flag_set_rollout(flag=flag, percentage=50)
    with pytest.raises(TransitionNotAllowed):
        services.flag_set_rollout(flag=flag, percentage=50, controlled_by="deployment 13")
    flag = services.flag_set_rollout(flag=flag, percentage=25, controlled_by="deployment 12")
    assert flag.default_rule["rollout"]["percentage"] == 25.0


def test_flag_release_control__hands_the_rollout_back_to_people(make_flag):
    flag = services.flag_set_rollout(flag=make_flag(), percentage=5, controlled_by="deployment 12")

    with pytest.raises(TransitionNotAllowed):
        services.flag_release_control(flag=flag, controlled_by="deployment 13")
    flag = services.flag_release_control(flag=flag, controlled_by="deployment 12")

    assert flag.controlled_by == ""
    assert (
        services.flag_set_rollout(flag=flag, percentage=50).default_rule["rollout"]["percentage"]
        == 50.0
    )


def test_flag_set_rollout__inside_a_callers_transaction__is_rolled_back_with_it(make_flag):
    from django.db import transaction

    flag = make_flag(default_rule={"variant": "off"})

    with pytest.raises(RuntimeError), transaction.atomic():
        services.flag_set_rollout(flag=flag, percentage=30, controlled_by="deployment 1")
        raise RuntimeError("the phase could not advance")

    flag.refresh_from_db()
    assert (flag.default_rule, flag.controlled_by) == ({"variant": "off"}, "")


def test_full_rollout__is_tracked_from_when_the_flag_serves_everyone(make_flag):
    flag = make_flag(default_rule={"variant": "off"})
    assert flag.full_rollout_since is None

    flag = services.flag_set_rollout(flag=flag, percentage=100)
    since = flag.full_rollout_since
    assert since is not None
    flag = services.flag_update(flag=flag, changes={"description": "still everyone"})
    assert flag.full_rollout_since == since

    flag = services.flag_disable(flag=flag)
    assert flag.full_rollout_since is None


def test_flag_delete__of_a_flag_a_deployment_drives__is_refused(make_flag):
    flag = services.flag_set_rollout(flag=make_flag(), percentage=5, controlled_by="deployment 12")

    with pytest.raises(TransitionNotAllowed):
        services.flag_delete(flag=flag)

    services.flag_delete(flag=services.flag_release_control(flag=flag))
    assert not Flag.objects.exists()


def test_segment_create__with_a_bad_constraint__names_it():
    with pytest.raises(ValidationFailed) as error:
        services.segment_create(
            key="beta", constraints=[{"attribute": "age", "operator": "num_gt", "values": ["old"]}]
        )

    assert field_of(error) == "constraints[0].values[0]"


def test_segment_update__bumps_its_version_and_the_shared_version(make_segment):
    segment = make_segment()
    before = read_version()

    segment = services.segment_update(segment=segment, changes={"name": "Beta testers"})

    assert segment.version == 2
    assert read_version() != before


def test_segment_delete__while_a_flag_names_it__is_refused_naming_the_flag(make_segment, make_flag):
    segment = make_segment()
    make_flag(rules=[ROLLOUT_RULE])

    with pytest.raises(TransitionNotAllowed, match="new-checkout"):
        services.segment_delete(segment=segment)


def test_evaluation_key_create__returns_the_secret_once_and_stores_its_digest():
    key, secret = services.evaluation_key_create(name="checkout", rate_limit=50)

    stored = EvaluationKey.objects.get()
    assert secret.startswith(stored.prefix)
    assert secret not in (stored.digest, stored.prefix)
    assert key.rate_limit == 50


@pytest.mark.parametrize(
    ("fields", "field"), [({"name": ""}, "name"), ({"name": "k", "rate_limit": 0}, "rate_limit")]
)
def test_evaluation_key_create__with_bad_input__names_the_field(fields, field):
    with pytest.raises(ValidationFailed) as error:
        services.evaluation_key_create(**fields)

    assert field_of(error) == field


def test_evaluation_key_revoke__marks_it__and_a_second_revoke_is_not_found():
    key, _secret = services.evaluation_key_create(name="checkout")

    services.evaluation_key_revoke(key_id=key.pk)

    assert EvaluationKey.objects.get().revoked_at is not None
    with pytest.raises(NotFound):
        services.evaluation_key_revoke(key_id=key.pk)


def test_exposures_flush__adds_to_the_stored_counts_in_one_upsert(make_flag):
    from flags.exposures import recorder

    for _ in range(3):
        recorder.record("new-checkout", "on")
    recorder.record("new-checkout", "off")
    services.flag_exposures_flush()
    recorder.record("new-checkout", "on")
    services.flag_exposures_flush()

    counts = dict(FlagExposure.objects.values_list("variant", "count"))
    assert counts == {"on": 4, "off": 1}
    assert recorder.pending == 0


def test_exposures_prune__deletes_counts_past_retention():
    old = timezone.now() - timedelta(days=40)
    FlagExposure.objects.create(flag_key="a", variant="on", bucket_start=old, count=3)
    FlagExposure.objects.create(flag_key="a", variant="on", bucket_start=timezone.now(), count=1)

    assert services.flag_exposures_prune() == 1
    assert FlagExposure.objects.count() == 1


def test_a_write__publishes_the_shared_version_when_its_transaction_commits(
    make_flag, django_capture_on_commit_callbacks
):
    flag = make_flag()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.flag_update(flag=flag, changes={"name": "x"})

    assert snapshot.bump_version in callbacks


def test_a_write__counts_in_its_transaction_and_moves_the_cache_token_only_after_commit(
    make_flag, django_capture_on_commit_callbacks
):
    from django.core.cache import cache

    from canary_site.versions import counter_value
    from flags.models import FlagsVersion

    flag = make_flag()
    count, token = counter_value(FlagsVersion), cache.get(snapshot.VERSION_CACHE_KEY)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.flag_kill(flag=flag, reason="errors")

    assert counter_value(FlagsVersion) == count + 1
    assert cache.get(snapshot.VERSION_CACHE_KEY) == token
    for callback in callbacks:
        callback()
    assert cache.get(snapshot.VERSION_CACHE_KEY) != token


# --- rules --------------------------------------------------------------------------------------

RULE_A = {"name": "a", "serve": {"variant": "on"}}
RULE_B = {"name": "b", "serve": {"variant": "off"}}
RULE_C = {"name": "c", "serve": {"variant": "on"}}


def names(flag_key: str = "new-checkout") -> list[str]:
    return [rule["name"] for rule in Flag.objects.get(key=flag_key).rules]


def test_flag_rule_verbs__splice_the_rules_and_bump_the_version(make_flag):
    flag = make_flag(rules=[RULE_A, RULE_B])

    flag = services.flag_rule_add(flag=flag, rule=RULE_C, expected_version=1)
    flag = services.flag_rule_move(flag=flag, index=2, to=0, expected_version=2)
    flag = services.flag_rule_update(
        flag=flag, index=1, rule={**RULE_A, "name": "a2"}, expected_version=3
    )
    flag = services.flag_rule_delete(flag=flag, index=2, expected_version=4)

    assert flag.version == 5
    assert names() == ["c", "a2"]


@pytest.mark.parametrize(
    ("verb", "arguments"),
    [
        (services.flag_rule_add, {"rule": RULE_C}),
        (services.flag_rule_update, {"index": 0, "rule": RULE_C}),
        (services.flag_rule_move, {"index": 0, "to": 1}),
        (services.flag_rule_delete, {"index": 0}),
    ],
)
def test_flag_rule_verbs__against_a_stale_version__are_refused_as_conflicts(
    make_flag, verb, arguments
):
    flag = make_flag(rules=[RULE_A, RULE_B])
    services.flag_update(flag=flag, changes={"description": "moved on"})

    with pytest.raises(Conflict) as refused:
        verb(flag=flag, expected_version=1, **arguments)

    assert refused.value.status_code == 409
    assert "version" in refused.value.fields
    assert names() == ["a", "b"]


def test_flag_rule_update__of_an_index_the_flag_lacks__is_not_found(make_flag):
    flag = make_flag(rules=[RULE_A])

    with pytest.raises(NotFound):
        services.flag_rule_update(flag=flag, index=1, rule=RULE_B, expected_version=1)


def test_flag_rule_add__with_a_bad_rule__names_the_field_within_the_rule(make_flag):
    flag = make_flag(rules=[RULE_A])

    with pytest.raises(ValidationFailed) as refused:
        services.flag_rule_add(flag=flag, rule={"serve": {"variant": "nope"}}, expected_version=1)

    assert list(refused.value.fields) == ["rule.serve.variant"]


# --- rules edited at the same moment (two connections) ------------------------------------------


def _in_thread(target: Any) -> threading.Thread:
    def run() -> None:
        try:
            target()
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _waiting_for_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


def _race(first: Any, second: Any) -> dict[str, Any]:
    """Run ``first`` in a transaction that stays open until ``second``, in another connection,
    is waiting for the flag's row lock; then commit ``first`` and let ``second`` finish."""
    if connection.vendor != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite runs one write transaction at a time")
    holding, release = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def hold() -> None:
        with transaction.atomic():
            outcome["first"] = first()
            holding.set()
            release.wait(30)

    def wait_then_write() -> None:
        try:
            outcome["second"] = second()
        except CanaryError as error:
            outcome["second"] = error

    one = _in_thread(hold)
    assert holding.wait(30)
    two = _in_thread(wait_then_write)
    blocked = wait_for(_waiting_for_a_lock, timeout=30, interval=0.02)
    release.set()
    one.join(30)
    two.join(30)
    assert blocked, "the second edit never waited for the first one's lock"
    return outcome


@pytest.mark.django_db(transaction=True)
def test_two_edits_of_one_version_at_once__the_second_is_a_conflict_and_nothing_is_lost(
    make_flag,
):
    flag = make_flag(rules=[RULE_A, RULE_B])

    outcome = _race(
        lambda: services.flag_rule_update(
            flag=flag, index=0, rule={**RULE_A, "name": "a2"}, expected_version=1
        ),
        lambda: services.flag_rule_update(
            flag=flag, index=1, rule={**RULE_B, "name": "b2"}, expected_version=1
        ),
    )

    assert outcome["first"].version == 2
    assert isinstance(outcome["second"], Conflict)
    assert names() == ["a2", "b"]
    assert Flag.objects.get().version == 2


@pytest.mark.django_db(transaction=True)
def test_two_adds_at_once__both_rules_are_kept(make_flag):
    flag = make_flag(rules=[RULE_A])

    outcome = _race(
        lambda: services.flag_rule_add(flag=flag, rule=RULE_B),
        lambda: services.flag_rule_add(flag=flag, rule=RULE_C),
    )

    assert outcome["second"].version == 3
    assert names() == ["a", "b", "c"]
