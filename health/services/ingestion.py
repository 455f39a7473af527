"""Ingestion: the routing proxy's outcome batches and the REST push, each batch counted once."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

from canary_site.choices import Source
from canary_site.exceptions import CanaryError, TransitionNotAllowed, ValidationFailed
from health import conf, store
from health.ingest import BucketDelta, OutcomeBatchItem, SampleError, outcome_deltas, parse_samples
from health.models import PushBatch


class PayloadTooLarge(CanaryError):
    """A push bigger than the store accepts in one request."""

    status_code = 413
    code = "payload_too_large"


def metrics_record_outcomes(*, outcomes: Iterable[OutcomeBatchItem]) -> int:
    """Add the routing proxy's per-(service, version, bucket) aggregates to the store.

    ``outcomes`` are `health.ingest.OutcomeBatchItem`s: additions, not totals. The batch is
    written with one statement per 1,000 buckets (no query per item), in one transaction, and
    adds up with concurrent flushes of the same buckets. Returns the number of buckets written.
    """
    try:
        deltas = outcome_deltas(outcomes, resolution=conf.bucket_seconds())
    except ValueError as error:
        raise ValidationFailed(str(error), field="outcomes") from error
    return store.upsert(deltas)


@dataclass(frozen=True)
class PushResult:
    """What a push did: samples counted, buckets written, and whether it was a retry."""

    accepted: int
    buckets: int
    duplicate: bool
    idempotency_key: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "buckets": self.buckets,
            "duplicate": self.duplicate,
            "idempotency_key": self.idempotency_key,
        }


def metrics_push(
    *,
    samples: Any,
    idempotency_key: str | None = None,
    user: Any = None,
    source: str = Source.API,
    now: datetime | None = None,
) -> PushResult:
    """Store a batch of pushed samples (shape in `health.ingest.parse_samples`).

    With an ``idempotency_key``, a batch that was stored before under the same key is not
    counted again (``duplicate`` is True); the same key with different samples is refused.
    Refuses more than ``CANARY_METRICS_PUSH_MAX_SAMPLES`` samples (413), and negative counts,
    unknown metrics, timestamps too far in the future or past retention (400, naming the
    sample's field).
    """
    now = now or timezone.now()
    if not isinstance(samples, list):
        raise ValidationFailed("Send samples as a list.", field="samples")
    limit = conf.push_max_samples()
    if len(samples) > limit:
        raise PayloadTooLarge(
            f"{len(samples):,} samples in one push; at most {limit:,} are accepted.",
            field="samples",
        )
    if idempotency_key is not None:
        idempotency_key = _check_key(idempotency_key)
    try:
        deltas = parse_samples(
            samples,
            resolution=conf.bucket_seconds(),
            now=now,
            max_future_seconds=conf.push_max_future_seconds(),
            max_age_seconds=conf.retention_hours() * 3600,
        )
    except SampleError as error:
        raise ValidationFailed(error.message, field=error.field) from error
    encoded = store.encode(deltas)
    duplicate = ingest_batch(
        deltas,
        encoded=encoded,
        key=idempotency_key,
        digest=batch_digest(encoded) if idempotency_key else "",
        samples=len(samples),
        source=str(source),
        user=user,
    )
    if duplicate:
        return PushResult(accepted=0, buckets=0, duplicate=True, idempotency_key=idempotency_key)
    return PushResult(
        accepted=len(samples),
        buckets=len(deltas),
        duplicate=False,
        idempotency_key=idempotency_key,
    )


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not 1 <= len(key.strip()) <= 200:
        raise ValidationFailed(
            "An idempotency key is 1 to 200 characters.", field="idempotency_key"
        )
    return key.strip()


def batch_digest(encoded: Sequence[str]) -> str:
    """What a batch adds to the store, hashed: a retry adds the same, whatever its order.

    ``encoded`` is `store.encode()` of the batch's deltas, the rows the upsert sends, so the
    hash costs no second pass over the deltas. Hashing the aggregated deltas rather than the raw
    samples is cheaper (a batch of 1,000 samples is a few dozen deltas) and calls two batches
    the same when their effect is."""
    digest = hashlib.sha256()
    for text in encoded:
        digest.update(text.encode())
    return digest.hexdigest()


def _digest_of_reprs(deltas: Sequence[BucketDelta]) -> str:
    """The digest keys were stored under before `batch_digest`: a retry of such a batch is
    still a retry. Keys live ``CANARY_METRICS_IDEMPOTENCY_HOURS``; after that this can go."""
    digest = hashlib.sha256()
    for delta in deltas:
        digest.update(repr((delta.key, *delta.additions())).encode())
    return digest.hexdigest()


def ingest_batch(
    deltas: Sequence[BucketDelta],
    *,
    encoded: Sequence[str] | None = None,
    key: str | None,
    digest: str,
    samples: int,
    source: str,
    user: Any = None,
) -> bool:
    """Upsert ``deltas`` once per key; True when the key was seen before (nothing written)."""
    if not key:
        store.upsert(deltas, encoded=encoded)
        return False
    batch = store.BatchRow(
        key=key,
        digest=digest,
        samples=samples,
        source=source,
        created_by_id=user.pk if getattr(user, "is_authenticated", False) else None,
        received_at=timezone.now(),
    )
    if store.upsert_once(deltas, batch=batch, encoded=encoded):
        return False
    earlier = PushBatch.objects.filter(key=key).values_list("digest", flat=True).first()
    if earlier is not None and earlier not in (digest, _digest_of_reprs(deltas)):
        raise TransitionNotAllowed(
            "This idempotency key was used for a different batch.", field="idempotency_key"
        )
    return True
