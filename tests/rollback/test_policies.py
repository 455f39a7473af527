"""The pure rules of approval policies: which covers a change, which governs, what is refused."""

from __future__ import annotations

from rollback.policies import (
    Place,
    PolicyView,
    action_problems,
    covers,
    governing,
    quorum_problem,
    ttl_problem,
)


def view(pk: int = 1, **fields: object) -> PolicyView:
    values: dict[str, object] = {
        "id": pk,
        "scope_kind": "all",
        "scope_value": "",
        "actions": ("deployment.promote_full",),
        "quorum": 1,
        "ttl_seconds": 3600,
        "one_rejection_rejects": True,
    }
    values.update(fields)
    return PolicyView(**values)  # type: ignore[arg-type]


def test_covers__needs_the_action_named():
    assert covers(view(), Place(action="deployment.promote_full"))
    assert not covers(view(), Place(action="deployment.promote"))


def test_covers__a_service_scope__only_that_service():
    policy = view(scope_kind="service", scope_value="checkout")

    assert covers(policy, Place(action="deployment.promote_full", service="checkout"))
    assert not covers(policy, Place(action="deployment.promote_full", service="search"))
    assert not covers(policy, Place(action="deployment.promote_full"))


def test_covers__a_flag_tag_scope__objects_with_the_tag():
    policy = view(scope_kind="flag_tag", scope_value="payments", actions=("flag.enable",))

    assert covers(policy, Place(action="flag.enable", tags=("ui", "payments")))
    assert not covers(policy, Place(action="flag.enable", tags=("ui",)))


def test_covers__an_environment_scope__the_install_labelled_so():
    policy = view(scope_kind="environment", scope_value="production")

    assert covers(policy, Place(action="deployment.promote_full", environment="production"))
    assert not covers(policy, Place(action="deployment.promote_full", environment="staging"))
    assert not covers(policy, Place(action="deployment.promote_full"))


def test_governing__the_strictest_covering_policy():
    lax = view(1, quorum=1)
    strict = view(2, quorum=2)
    elsewhere = view(3, quorum=5, scope_kind="service", scope_value="search")

    chosen = governing([lax, strict, elsewhere], Place("deployment.promote_full", "checkout"))

    assert chosen == strict


def test_governing__ties_go_to_one_rejection_then_the_shortest_time():
    lenient = view(1, one_rejection_rejects=False)
    short = view(2, ttl_seconds=600)
    long = view(3, ttl_seconds=7200)

    assert governing([lenient, long, short], Place("deployment.promote_full")) == short


def test_governing__none_covers__none():
    assert governing([view()], Place("flag.delete")) is None


def test_action_problems__an_emergency__is_refused_saying_why():
    problems = action_problems(["flag.kill"])

    assert problems == [
        "'flag.kill' cannot be gated: a flag kill is the emergency off-switch and never waits "
        "for a sign-off."
    ]
    assert "never waits" in action_problems(["deployment.auto_rollback"])[0]
    assert "emergency" in action_problems(["killswitch.trigger"])[0]


def test_action_problems__unknown_empty_or_repeated():
    assert "not an action" in action_problems(["deployment.explode"])[0]
    assert action_problems([]) == ["Name at least one action, as a list of action words."]
    assert action_problems("flag.update")
    assert action_problems(["flag.update", "flag.update"]) == ["Each action is named once."]
    assert action_problems(["flag.update", "routing.weights"]) == []


def test_quorum_problem__below_one_or_above_the_approvers():
    assert "1 or more" in quorum_problem(0, 3)
    assert quorum_problem(4, 3) == (
        "The quorum of 4 cannot be met: only 3 people can approve under this policy."
    )
    assert "only 1 person" in quorum_problem(2, 1)
    assert quorum_problem(3, 3) is None


def test_ttl_problem__from_a_minute_to_thirty_days():
    assert ttl_problem(59)
    assert ttl_problem(31 * 86400)
    assert ttl_problem(60) is None
