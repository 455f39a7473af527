"""Fixtures of the flags tests: a clean per-process state, flags, segments and keys."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _fresh_flag_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts with no snapshot, no waiting exposures and no held rate tokens: the
    database is rolled back between tests, and these live in the process."""
    if not request.config.pluginmanager.hasplugin("django"):
        yield
        return
    from flags.exposures import recorder
    from flags.ratelimit import limiter
    from flags.snapshot import store

    store.reset()
    recorder.reset()
    limiter.reset()
    yield
    store.reset()
    recorder.reset()
    limiter.reset()


@pytest.fixture
def make_segment(db: Any) -> Callable[..., Any]:
    from flags import services

    def make(key: str = "beta", constraints: list[Any] | None = None, **fields: Any) -> Any:
        if constraints is None:
            constraints = [{"attribute": "country", "operator": "in", "values": ["NL", "BE"]}]
        return services.segment_create(key=key, constraints=constraints, **fields)

    return make


@pytest.fixture
def make_flag(db: Any) -> Callable[..., Any]:
    from flags import services

    def make(key: str = "new-checkout", **fields: Any) -> Any:
        fields.setdefault("status", "enabled")
        return services.flag_create(key=key, **fields)

    return make


@pytest.fixture
def evaluation_key(db: Any) -> str:
    """The secret of a fresh evaluation key."""
    from flags import services

    _key, secret = services.evaluation_key_create(name="checkout-service")
    return secret


@pytest.fixture
def viewer(make_user: Callable[..., Any]) -> Any:
    return make_user("vic", roles=["viewer"])


@pytest.fixture
def approver(make_user: Callable[..., Any]) -> Any:
    return make_user("ava", roles=["approver"])
