"""OFREP over HTTP: the single and bulk endpoints, their errors, authentication, rate limits and
ETags, served from the in-memory snapshot. The protocol tests run the Django test client; the
SDK tests run the real OpenFeature SDK with its OFREP provider against a live server."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from django.test import Client

from flags import services
from flags.exposures import recorder
from flags.models import FlagExposure

pytestmark = pytest.mark.django_db

SINGLE = "/ofrep/v1/evaluate/flags/{key}"
BULK = "/ofrep/v1/evaluate/flags"


@pytest.fixture
def ofrep(evaluation_key: str) -> Any:
    client = Client()

    def post(path: str, body: Any = None, *, raw: bytes | None = None, **headers: Any) -> Any:
        headers.setdefault("HTTP_X_API_KEY", evaluation_key)
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        return client.post(path, data=data, content_type="application/json", **headers)

    return post


def single(key: str) -> str:
    return SINGLE.format(key=key)


# --- success ------------------------------------------------------------------------------------


def test_single__boolean_flag__answers_key_value_reason_variant_and_flat_metadata(ofrep, make_flag):
    make_flag()

    response = ofrep(single("new-checkout"), {"context": {"targetingKey": "u1"}})

    assert response.status_code == 200
    assert response.json() == {
        "key": "new-checkout",
        "value": True,
        "reason": "STATIC",
        "variant": "on",
        "metadata": {"flag_version": 1, "default_rule": True},
    }


def test_single__body_without_a_context__is_valid(ofrep, make_flag):
    make_flag()

    assert ofrep(single("new-checkout")).status_code == 200
    assert ofrep(single("new-checkout"), {}).status_code == 200
    assert ofrep(single("new-checkout"), {"context": None}).status_code == 200


def test_single__number_flag__keeps_floats_floats(ofrep, make_flag):
    make_flag(
        "discount",
        value_type="number",
        variants=[{"name": "none", "value": 0}, {"name": "some", "value": 2.0}],
        default_rule={"variant": "some"},
    )

    body = ofrep(single("discount")).content.decode()

    assert '"value":2.0' in body


def test_single__segment_rule_with_a_rollout__matches_and_says_which_rule(
    ofrep, make_flag, make_segment
):
    make_segment("beta")
    make_flag(
        default_rule={"variant": "off"},
        rules=[
            {
                "name": "beta",
                "segments": ["beta"],
                "serve": {"rollout": {"percentage": 100, "variant": "on"}},
            }
        ],
    )

    body = ofrep(
        single("new-checkout"), {"context": {"targetingKey": "u1", "country": "NL"}}
    ).json()

    assert (body["value"], body["reason"]) == (True, "TARGETING_MATCH")
    assert body["metadata"]["segment_key"] == "beta"
    assert body["metadata"]["rule_index"] == 0


def test_single__disabled_flag__serves_its_off_variant_as_disabled(ofrep, make_flag):
    make_flag(status="disabled")

    body = ofrep(single("new-checkout")).json()

    assert (body["value"], body["variant"], body["reason"]) == (False, "off", "DISABLED")


# --- errors -------------------------------------------------------------------------------------


def test_single__unknown_flag__is_404_flag_not_found(ofrep):
    response = ofrep(single("nope"))

    assert response.status_code == 404
    assert response.json()["errorCode"] == "FLAG_NOT_FOUND"
    assert response.json()["key"] == "nope"
    assert response.json()["errorDetails"]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "PARSE_ERROR"),
        (b"\xff\xfe\x00", "PARSE_ERROR"),
        (b"[1, 2]", "PARSE_ERROR"),
        (b"[" * 100_000, "PARSE_ERROR"),
        (b'{"context": "user-1"}', "INVALID_CONTEXT"),
        (b'{"context": {"targetingKey": 42}}', "INVALID_CONTEXT"),
    ],
)
def test_single__bad_body__is_400_with_the_error_code(ofrep, make_flag, raw, code):
    make_flag()

    response = ofrep(single("new-checkout"), raw=raw)

    assert response.status_code == 400
    assert response.json()["errorCode"] == code
    assert response.json()["key"] == "new-checkout"


@pytest.mark.parametrize("path", [SINGLE.format(key="new-checkout"), BULK])
def test_every_endpoint__with_bad_json__is_400_never_500(ofrep, make_flag, path):
    make_flag()

    response = ofrep(path, raw=b'{"context": {"a": NaN')

    assert response.status_code == 400
    assert response.json()["errorCode"] == "PARSE_ERROR"


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b'{"context": {"targetingKey": "u1", "score": NaN}}', "context.score"),
        (b'{"context": {"limits": [1, Infinity]}}', "context.limits[1]"),
        (b'{"context": {"a": {"b": -Infinity}}}', "context.a.b"),
        (b'{"context": {"big": 1e999}}', "context.big"),
    ],
)
@pytest.mark.parametrize("path", [SINGLE.format(key="new-checkout"), BULK])
def test_every_endpoint__nan_or_infinity_in_the_context__is_400_invalid_context_naming_it(
    ofrep, make_flag, path, raw, where
):
    make_flag(
        rules=[
            {
                "constraints": [{"attribute": "score", "operator": "num_gt", "values": ["1"]}],
                "serve": {"variant": "off"},
            }
        ]
    )

    response = ofrep(path, raw=raw)

    body = response.json()
    assert response.status_code == 400
    assert body["errorCode"] == "INVALID_CONTEXT"
    assert where in body["errorDetails"]
    assert ("key" in body) is (path != BULK)


def test_single__nan_outside_the_context__is_400_parse_error(ofrep, make_flag):
    make_flag()

    response = ofrep(single("new-checkout"), raw=b'{"context": {"score": 1.5}, "extra": NaN}')

    assert response.status_code == 400
    assert response.json()["errorCode"] == "PARSE_ERROR"


@pytest.mark.parametrize("path", [SINGLE.format(key="new-checkout"), BULK])
def test_every_endpoint__body_over_the_limit__is_413_in_ofreps_error_shape(
    ofrep, make_flag, settings, path
):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    make_flag()

    response = ofrep(path, {"context": {"targetingKey": "u1", "padding": "x" * 2000}})

    body = response.json()
    assert response.status_code == 413
    assert body["errorCode"] == "GENERAL"
    assert "1024 bytes" in body["errorDetails"]
    assert body.get("key") == (None if path == BULK else "new-checkout")


def test_single__rollout_without_a_targeting_key__is_400_targeting_key_missing(ofrep, make_flag):
    make_flag(default_rule={"rollout": {"percentage": 50, "variant": "on"}})

    response = ofrep(single("new-checkout"), {"context": {"country": "NL"}})

    assert response.status_code == 400
    assert response.json()["errorCode"] == "TARGETING_KEY_MISSING"


def test_single__context_text_that_is_not_valid_unicode__is_400_invalid_context(ofrep, make_flag):
    make_flag(default_rule={"rollout": {"percentage": 50, "variant": "on"}})

    response = ofrep(single("new-checkout"), raw=b'{"context": {"targetingKey": "\\ud800"}}')
    emoji = ofrep(single("new-checkout"), raw=b'{"context": {"targetingKey": "\\ud83d\\ude00"}}')

    assert response.status_code == 400
    assert response.json()["errorCode"] == "INVALID_CONTEXT"
    assert emoji.status_code == 200


def test_single__get__is_405(ofrep, evaluation_key):
    response = Client().get(single("x"), HTTP_X_API_KEY=evaluation_key)

    assert response.status_code == 405
    assert response["Allow"] == "POST"


# --- authentication -----------------------------------------------------------------------------


def test_single__without_a_key__is_401(make_flag):
    make_flag()

    response = Client().post(single("new-checkout"), data=b"{}", content_type="application/json")

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_single__with_an_unknown_key__is_401(ofrep, make_flag):
    make_flag()

    assert ofrep(single("new-checkout"), HTTP_X_API_KEY="cnrye_nope").status_code == 401


def test_single__with_the_key_as_a_bearer_token__evaluates(make_flag, evaluation_key):
    make_flag()

    response = Client().post(
        single("new-checkout"),
        data=b"{}",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {evaluation_key}",
    )

    assert response.status_code == 200


def test_single__with_a_revoked_key__is_403(make_flag):
    make_flag()
    key, secret = services.evaluation_key_create(name="old")
    services.evaluation_key_revoke(key_id=key.pk)

    response = Client().post(
        single("new-checkout"), data=b"{}", content_type="application/json", HTTP_X_API_KEY=secret
    )

    assert response.status_code == 403


def test_single__with_a_key_revoked_after_use__is_refused_at_once(make_flag):
    make_flag()
    key, secret = services.evaluation_key_create(name="leaked")
    client = Client()

    def status() -> int:
        return client.post(
            single("new-checkout"),
            data=b"{}",
            content_type="application/json",
            HTTP_X_API_KEY=secret,
        ).status_code

    assert status() == 200
    services.evaluation_key_revoke(key_id=key.pk)
    assert status() == 403


def test_single__with_a_personal_api_token__is_403_because_it_cannot_evaluate(make_flag, engineer):
    from canary_site import services as site_services

    make_flag()
    _token, secret = site_services.api_token_create(user=engineer, name="ci")

    response = Client().post(
        single("new-checkout"),
        data=b"{}",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )

    assert response.status_code == 403


def test_evaluation_key__cannot_use_the_rest_api(evaluation_key):
    response = Client().get("/api/v1/flags/", HTTP_AUTHORIZATION=f"Bearer {evaluation_key}")

    assert response.status_code == 401


# --- rate limit ---------------------------------------------------------------------------------


def test_single__past_the_keys_rate_limit__is_429_with_retry_after_in_seconds(make_flag):
    make_flag()
    _key, secret = services.evaluation_key_create(name="tight", rate_limit=1)
    client = Client()

    statuses = []
    for _ in range(3):
        response = client.post(
            single("new-checkout"),
            data=b"{}",
            content_type="application/json",
            HTTP_X_API_KEY=secret,
        )
        statuses.append(response.status_code)
        if response.status_code == 429:
            limited = response

    # Three requests fall in at most two one-second windows, so one window saw two of them.
    assert 429 in statuses
    assert limited["Retry-After"].isdigit() and int(limited["Retry-After"]) >= 1
    assert "errorDetails" in limited.json()


def test_rate_limit__default__comes_from_the_setting(make_flag, settings, evaluation_key):
    settings.CANARY_OFREP_RATE_LIMIT = 1
    make_flag()
    client = Client()

    statuses = [
        client.post(
            single("new-checkout"),
            data=b"{}",
            content_type="application/json",
            HTTP_X_API_KEY=evaluation_key,
        ).status_code
        for _ in range(3)
    ]

    assert 429 in statuses


# --- bulk ---------------------------------------------------------------------------------------


def test_bulk__evaluates_every_flag__with_failures_inline(ofrep, make_flag):
    make_flag("a-flag")
    make_flag("b-flag", default_rule={"rollout": {"percentage": 50, "variant": "on"}})

    response = ofrep(BULK, {"context": {"country": "NL"}})

    assert response.status_code == 200
    flags = {item["key"]: item for item in response.json()["flags"]}
    assert flags["a-flag"]["value"] is True
    assert flags["b-flag"]["errorCode"] == "TARGETING_KEY_MISSING"


def test_bulk__with_the_etag_it_gave__is_304_until_a_flag_changes(ofrep, make_flag):
    flag = make_flag()
    context = {"context": {"targetingKey": "u1"}}
    etag = ofrep(BULK, context)["ETag"]

    not_modified = ofrep(BULK, context, HTTP_IF_NONE_MATCH=etag)
    assert not_modified.status_code == 304
    assert not_modified.content == b""

    services.flag_update(flag=flag, changes={"description": "changed"})
    changed = ofrep(BULK, context, HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200
    assert changed["ETag"] != etag


def test_bulk__etag__covers_the_context(ofrep, make_flag):
    make_flag()
    etag = ofrep(BULK, {"context": {"targetingKey": "u1"}})["ETag"]

    other = ofrep(BULK, {"context": {"targetingKey": "u2"}}, HTTP_IF_NONE_MATCH=etag)

    assert other.status_code == 200
    assert other["ETag"] != etag


def test_bulk__etag__changes_when_a_segment_changes(ofrep, make_flag, make_segment):
    segment = make_segment()
    make_flag()
    etag = ofrep(BULK, {})["ETag"]

    services.segment_update(segment=segment, changes={"name": "renamed"})

    assert ofrep(BULK, {}, HTTP_IF_NONE_MATCH=etag).status_code == 200


def test_bulk__weak_and_listed_etags__match(ofrep, make_flag):
    make_flag()
    etag = ofrep(BULK, {})["ETag"]

    assert ofrep(BULK, {}, HTTP_IF_NONE_MATCH=f'"other", W/{etag}').status_code == 304


def test_bulk__if_none_match_star__evaluates_rather_than_answering_304(ofrep, make_flag):
    make_flag()

    response = ofrep(BULK, {"context": {"targetingKey": "u1"}}, HTTP_IF_NONE_MATCH="*")

    assert response.status_code == 200
    assert [item["key"] for item in response.json()["flags"]] == ["new-checkout"]
    assert response["ETag"]


def test_bulk__context_that_is_not_an_object__is_400_invalid_context(ofrep):
    response = ofrep(BULK, {"context": [1]})

    assert response.status_code == 400
    assert response.json()["errorCode"] == "INVALID_CONTEXT"


# --- serving from memory ------------------------------------------------------------------------


def test_single__once_warm__makes_no_database_query(
    ofrep, make_flag, settings, django_assert_num_queries
):
    settings.CANARY_FLAGS_EXPOSURE_FLUSH_SECONDS = 3600
    # Its one query per interval is not per request; held off so a slow run cannot meet it.
    settings.CANARY_FLAGS_DB_VERSION_SECONDS = 3600
    recorder.reset()
    make_flag()
    ofrep(single("new-checkout"))

    with django_assert_num_queries(0):
        for _ in range(5):
            assert (
                ofrep(single("new-checkout"), {"context": {"targetingKey": "u1"}}).status_code
                == 200
            )


def test_served_results__are_counted_as_exposures_and_flushed_in_one_batch(ofrep, make_flag):
    make_flag()
    for user in range(4):
        ofrep(single("new-checkout"), {"context": {"targetingKey": f"u{user}"}})

    services.flag_exposures_flush()

    assert list(FlagExposure.objects.values_list("variant", "count")) == [("on", 4)]


def test_configuration__says_what_the_server_supports(evaluation_key):
    body = Client().get("/ofrep/v1/configuration", HTTP_X_API_KEY=evaluation_key).json()

    assert body["capabilities"]["cacheInvalidation"]["polling"]["enabled"] is True


# --- the real OpenFeature SDK against a live server ---------------------------------------------


@pytest.fixture
def sdk_client(live_server: Any) -> Any:
    """An OpenFeature client whose provider is OFREP on the live server, under its own domain."""
    from openfeature import api
    from openfeature.contrib.provider.ofrep import OFREPProvider

    def make(secret: str) -> Any:
        domain = f"test-{uuid.uuid4().hex[:8]}"
        provider = OFREPProvider(live_server.url, headers_factory=lambda: {"X-API-Key": secret})
        api.set_provider(provider, domain=domain)
        return api.get_client(domain)

    yield make
    api.clear_providers()


def context(targeting_key: str | None = "user-1", **attributes: Any) -> Any:
    from openfeature.evaluation_context import EvaluationContext

    return EvaluationContext(targeting_key=targeting_key, attributes=attributes)


@pytest.mark.django_db(transaction=True)
def test_sdk__evaluates_boolean_string_number_and_object_flags(
    sdk_client, make_flag, evaluation_key
):
    make_flag("dark-mode")
    make_flag(
        "button-colour",
        value_type="string",
        variants=[{"name": "grey", "value": "#888"}, {"name": "blue", "value": "#00f"}],
        default_rule={"variant": "blue"},
    )
    make_flag(
        "max-items",
        value_type="number",
        variants=[{"name": "few", "value": 3}, {"name": "many", "value": 50}],
        default_rule={"variant": "many"},
    )
    make_flag(
        "discount",
        value_type="number",
        variants=[{"name": "none", "value": 0.0}, {"name": "some", "value": 12.5}],
        default_rule={"variant": "some"},
    )
    make_flag(
        "checkout-config",
        value_type="object",
        variants=[
            {"name": "v1", "value": {"steps": 3}},
            {"name": "v2", "value": {"steps": 1, "express": True}},
        ],
        default_rule={"variant": "v2"},
    )
    client = sdk_client(evaluation_key)

    boolean = client.get_boolean_details("dark-mode", False, context())
    assert (boolean.value, boolean.variant, boolean.reason, boolean.error_code) == (
        True,
        "on",
        "STATIC",
        None,
    )
    assert boolean.flag_metadata["flag_version"] == 1
    assert client.get_string_value("button-colour", "", context()) == "#00f"
    assert client.get_integer_value("max-items", 0, context()) == 50
    assert client.get_float_value("discount", 0.0, context()) == 12.5
    assert client.get_object_value("checkout-config", {}, context()) == {
        "steps": 1,
        "express": True,
    }


@pytest.mark.django_db(transaction=True)
def test_sdk__missing_flag__is_flag_not_found_with_the_default(sdk_client, evaluation_key):
    details = sdk_client(evaluation_key).get_boolean_details("nope", True, context())

    assert (details.value, details.error_code) == (True, "FLAG_NOT_FOUND")


@pytest.mark.django_db(transaction=True)
def test_sdk__killed_flag__serves_the_off_variant_as_disabled(
    sdk_client, make_flag, evaluation_key
):
    services.flag_kill(flag=make_flag("dark-mode"), reason="errors spiked")

    details = sdk_client(evaluation_key).get_boolean_details("dark-mode", True, context())

    assert (details.value, details.variant, details.reason) == (False, "off", "DISABLED")
    assert details.flag_metadata["status"] == "killed"


@pytest.mark.django_db(transaction=True)
def test_sdk__missing_targeting_key__is_targeting_key_missing(
    sdk_client, make_flag, evaluation_key
):
    make_flag("dark-mode", default_rule={"rollout": {"percentage": 30, "variant": "on"}})

    details = sdk_client(evaluation_key).get_boolean_details(
        "dark-mode", True, context(None, country="NL")
    )

    assert (details.value, details.error_code) == (True, "TARGETING_KEY_MISSING")


@pytest.mark.django_db(transaction=True)
def test_sdk__rate_limited_key__gets_the_default_and_backs_off(sdk_client, make_flag):
    make_flag("dark-mode")
    _key, secret = services.evaluation_key_create(name="tight", rate_limit=1)
    client = sdk_client(secret)

    results = [client.get_boolean_details("dark-mode", None, context()) for _ in range(3)]

    limited = [details for details in results if details.error_code == "GENERAL"]
    assert limited, results
    assert "Rate limited" in limited[0].error_message
    assert limited[0].value is None


@pytest.mark.django_db(transaction=True)
def test_bulk__over_http__answers_304_to_its_own_etag(live_server, make_flag, evaluation_key):
    import requests

    make_flag("dark-mode")
    url = f"{live_server.url}{BULK}"
    headers = {"X-API-Key": evaluation_key}
    first = requests.post(
        url, json={"context": {"targetingKey": "u1"}}, headers=headers, timeout=10
    )

    again = requests.post(
        url,
        json={"context": {"targetingKey": "u1"}},
        headers={**headers, "If-None-Match": first.headers["ETag"]},
        timeout=10,
    )

    assert first.status_code == 200
    assert [flag["key"] for flag in first.json()["flags"]] == ["dark-mode"]
    assert again.status_code == 304
