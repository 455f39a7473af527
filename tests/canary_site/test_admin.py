"""The admin shows no more than a role may do: tokens only to their owners (superusers see
names, never digests), revocation is final on every path, evidence is deleted by no person, and
the role groups and superuser powers are not editable by those who should not edit them."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from canary_site import services
from canary_site.exceptions import NotFound, TransitionNotAllowed
from canary_site.models import ApiToken, AuditEntry

pytestmark = pytest.mark.django_db


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def superuser(make_user: Any) -> Any:
    user = make_user("root")
    user.is_superuser = user.is_staff = True
    user.save(update_fields=["is_superuser", "is_staff"])
    return user


@pytest.fixture
def tokens(make_user: Any) -> dict[str, Any]:
    """Two people's tokens, with the secret of each."""
    mine, my_secret = services.api_token_create(user=make_user("vic", roles=["viewer"]), name="ci")
    theirs, their_secret = services.api_token_create(
        user=make_user("erin", roles=["engineer"]), name="deploy-bot"
    )
    return {"mine": mine, "theirs": theirs, "secrets": [my_secret, their_secret]}


# --- tokens -------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["viewer", "engineer", "approver", "admin"])
def test_token_list__for_a_role__shows_only_the_owners_own_tokens(make_user, tokens, role):
    user = tokens["mine"].user
    user.groups.set(Group.objects.filter(name=role))
    client = client_for(user)

    listing = client.get("/admin/canary_site/apitoken/")
    other = client.get(f"/admin/canary_site/apitoken/{tokens['theirs'].pk}/change/")

    assert listing.status_code == 200
    assert "ci" in listing.content.decode()
    assert "deploy-bot" not in listing.content.decode()
    assert other.status_code == 302  # not found among the tokens this person may see
    assert client.get(f"/admin/canary_site/apitoken/{tokens['mine'].pk}/change/").status_code == 200


def test_token_pages__for_a_superuser__show_names_and_owners_and_never_a_digest(superuser, tokens):
    client = client_for(superuser)

    listing = client.get("/admin/canary_site/apitoken/").content.decode()
    detail = client.get(f"/admin/canary_site/apitoken/{tokens['theirs'].pk}/change/")
    history = client.get(f"/admin/canary_site/apitoken/{tokens['theirs'].pk}/history/")

    assert "ci" in listing and "deploy-bot" in listing and "erin" in listing
    for page in (listing, detail.content.decode(), history.content.decode()):
        for token in (tokens["mine"], tokens["theirs"]):
            assert token.digest not in page
        for secret in tokens["secrets"]:
            assert secret not in page
    assert 'name="revoked_at"' not in detail.content.decode()  # read-only, not a form field


def test_token_revoke_action__by_the_owner_and_by_a_superuser__revokes_for_good(superuser, tokens):
    owner = client_for(tokens["mine"].user)

    owner.post(
        "/admin/canary_site/apitoken/",
        {"action": "revoke_tokens", "_selected_action": [tokens["mine"].pk, tokens["theirs"].pk]},
    )
    client_for(superuser).post(
        "/admin/canary_site/apitoken/",
        {"action": "revoke_tokens", "_selected_action": [tokens["theirs"].pk]},
    )

    tokens["mine"].refresh_from_db()
    tokens["theirs"].refresh_from_db()
    assert tokens["mine"].revoked_at is not None
    assert tokens["theirs"].revoked_at is not None
    entry = AuditEntry.objects.filter(object_pk=str(tokens["theirs"].pk), verb="revoke").get()
    assert entry.actor == superuser


def test_token_change__in_the_admin__cannot_clear_a_revocation(superuser, tokens):
    token = services.api_token_revoke(user=tokens["mine"].user, token_id=tokens["mine"].pk)

    response = client_for(superuser).post(
        f"/admin/canary_site/apitoken/{token.pk}/change/",
        {"name": token.name, "revoked_at_0": "", "revoked_at_1": ""},
    )

    assert response.status_code == 403
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_token_revocation__is_final_through_the_model_the_orm_and_the_service(tokens):
    token = services.api_token_revoke(user=tokens["mine"].user, token_id=tokens["mine"].pk)

    token.revoked_at = None
    with pytest.raises(TransitionNotAllowed) as saved:
        token.save()
    with pytest.raises(TransitionNotAllowed):
        ApiToken.objects.filter(pk=token.pk).update(revoked_at=None)
    with pytest.raises(TransitionNotAllowed):
        ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    with pytest.raises(NotFound):
        services.api_token_revoke(user=token.user, token_id=token.pk)

    assert saved.value.fields == {"revoked_at": ["A revoked token stays revoked."]}
    token.refresh_from_db()
    assert token.revoked_at is not None
    # Revoking an active token the bulk way is still allowed.
    assert ApiToken.objects.filter(pk=tokens["theirs"].pk).update(revoked_at=timezone.now()) == 1


def test_token_revoke__of_someone_elses_token__is_not_found(tokens):
    with pytest.raises(NotFound):
        services.api_token_revoke(user=tokens["mine"].user, token_id=tokens["theirs"].pk)

    tokens["theirs"].refresh_from_db()
    assert tokens["theirs"].revoked_at is None


def test_evaluation_key_pages__never_show_the_digest_and_keep_revocation_final(superuser):
    from flags import services as flag_services

    key, secret = flag_services.evaluation_key_create(name="checkout")
    flag_services.evaluation_key_revoke(key_id=key.pk)
    client = client_for(superuser)

    page = client.get(f"/admin/flags/evaluationkey/{key.pk}/change/").content.decode()
    cleared = client.post(
        f"/admin/flags/evaluationkey/{key.pk}/change/", {"revoked_at_0": "", "revoked_at_1": ""}
    )

    key.refresh_from_db()
    assert key.digest not in page and secret not in page
    assert cleared.status_code == 403
    assert key.revoked_at is not None


# --- evidence -----------------------------------------------------------------------------------

EVIDENCE_ADMINS = [
    "canary_site/auditentry",
    "flags/flagexposure",
    "health/metricbucket",
    "health/healthcheck",
    "health/alert",
    "health/notificationoutbox",
    "health/pushbatch",
]


@pytest.fixture
def evidence() -> dict[str, Any]:
    """One row of each evidence model that has an admin."""
    from flags.models import FlagExposure
    from health.models import Alert, HealthCheck, MetricBucket, NotificationOutbox, PushBatch

    now = timezone.now()
    check = HealthCheck.objects.create(
        service="shop",
        canary_version="2",
        window_seconds=60,
        window_end=now,
        verdict="critical",
        message="errors",
    )
    alert = Alert.objects.create(
        service="shop", canary_version="2", severity="critical", title="shop", message="errors"
    )
    rows = {
        "flags/flagexposure": FlagExposure.objects.create(
            flag_key="f", variant="on", bucket_start=now, count=1
        ),
        "health/metricbucket": MetricBucket.objects.create(
            service="shop", version="2", start=now, resolution=10
        ),
        "health/healthcheck": check,
        "health/alert": alert,
        "health/notificationoutbox": NotificationOutbox.objects.create(
            key="k", alert=alert, event="raised", channel="email", target="a@b.c", subject="s"
        ),
        "health/pushbatch": PushBatch.objects.create(key="p", digest="0" * 64, samples=1),
    }
    services.api_token_create(user=_someone(), name="makes an audit entry")
    rows["canary_site/auditentry"] = AuditEntry.objects.first()
    return rows


def _someone() -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("someone")


@pytest.mark.parametrize("model", EVIDENCE_ADMINS)
def test_evidence_admin__a_superuser__can_neither_delete_one_row_nor_many(
    superuser, evidence, model
):
    row = evidence[model]
    client = client_for(superuser)

    one = client.post(f"/admin/{model}/{row.pk}/delete/", {"post": "yes"})
    many = client.post(
        f"/admin/{model}/",
        {"action": "delete_selected", "_selected_action": [row.pk], "index": "0", "post": "yes"},
    )
    listing = client.get(f"/admin/{model}/").content.decode()

    assert one.status_code == 403
    assert many.status_code in (200, 302)
    assert type(row).objects.filter(pk=row.pk).exists()
    assert 'value="delete_selected"' not in listing


def test_alert_admin__a_viewer__is_offered_no_action_and_cannot_post_one(make_user, evidence):
    alert = evidence["health/alert"]
    client = client_for(make_user("vic", roles=["viewer"]))

    listing = client.get("/admin/health/alert/").content.decode()
    client.post(
        "/admin/health/alert/",
        {"action": "acknowledge", "_selected_action": [alert.pk], "index": "0"},
    )

    alert.refresh_from_db()
    assert 'value="acknowledge"' not in listing
    assert alert.status == "open"


def test_alert_admin__an_engineer__acknowledges_through_the_action(make_user, evidence):
    alert = evidence["health/alert"]
    client = client_for(make_user("erin", roles=["engineer"]))

    client.post(
        "/admin/health/alert/",
        {"action": "acknowledge", "_selected_action": [alert.pk], "index": "0"},
    )

    alert.refresh_from_db()
    assert alert.status == "acknowledged"


# --- groups and accounts ------------------------------------------------------------------------


def test_group_admin__for_admins_and_superusers__is_read_only(make_user, superuser):
    viewer_group = Group.objects.get(name="viewer")
    before = set(viewer_group.permissions.values_list("pk", flat=True))
    admin = make_user("ada", roles=["admin"])

    for user in (admin, superuser):
        client = client_for(user)
        assert client.get(f"/admin/auth/group/{viewer_group.pk}/change/").status_code == 200
        changed = client.post(
            f"/admin/auth/group/{viewer_group.pk}/change/",
            {"name": "viewer", "permissions": [*before, 1]},
        )
        assert changed.status_code == 403
        assert client.get("/admin/auth/group/add/").status_code == 403

    assert set(viewer_group.permissions.values_list("pk", flat=True)) == before


def test_account_admin__an_admin_who_is_not_a_superuser__cannot_make_or_edit_superusers(
    make_user, superuser
):
    admin = make_user("ada", roles=["admin"])
    viewer = make_user("vic", roles=["viewer"])
    client = client_for(admin)

    edit_root = client.get(f"/admin/auth/user/{superuser.pk}/change/")
    root_password = client.post(
        f"/admin/auth/user/{superuser.pk}/password/",
        {"password1": "x-New-pass-123", "password2": "x-New-pass-123"},
    )
    promote = client.post(
        f"/admin/auth/user/{viewer.pk}/change/",
        {
            "username": "vic",
            "is_active": "on",
            "is_staff": "on",
            "is_superuser": "on",
            "groups": [Group.objects.get(name="viewer").pk],
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
        },
    )

    viewer.refresh_from_db()
    superuser.refresh_from_db()
    assert edit_root.status_code == 200  # shown, read-only
    assert 'name="is_superuser"' not in edit_root.content.decode()
    assert root_password.status_code == 403
    assert superuser.check_password("pw-Canary-123")
    assert promote.status_code == 302
    assert not viewer.is_superuser


def test_account_admin__deletes_a_person_with_their_tokens(make_user):
    admin = make_user("ada", roles=["admin"])
    leaver = make_user("leaver", roles=["engineer"])
    services.api_token_create(user=leaver, name="laptop")

    response = client_for(admin).post(f"/admin/auth/user/{leaver.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not ApiToken.objects.filter(name="laptop").exists()


# --- deletes a service refuses ------------------------------------------------------------------


def test_segment_admin__deleting_a_segment_in_use__is_refused_with_the_reason(superuser):
    from flags import services as flag_services
    from flags.models import Segment

    segment = flag_services.segment_create(
        key="beta", constraints=[{"attribute": "country", "operator": "in", "values": ["NL"]}]
    )
    flag_services.flag_create(
        key="checkout", rules=[{"name": "b", "segments": ["beta"], "serve": {"variant": "on"}}]
    )

    response = client_for(superuser).post(
        f"/admin/flags/segment/{segment.pk}/delete/", {"post": "yes"}, follow=True
    )

    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == f"/admin/flags/segment/{segment.pk}/change/"
    messages = [str(message) for message in response.context["messages"]]
    assert any("checkout" in message for message in messages), messages
    assert not any("deleted successfully" in message for message in messages), messages
    assert Segment.objects.filter(pk=segment.pk).exists()
