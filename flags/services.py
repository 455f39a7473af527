"""Writes of the flags app: plain keyword-only functions named <entity>_<action>.

Every write validates the definition with the engine (errors name the engine's field, e.g.
``rules[0].constraints[1].operator``), runs ``full_clean()``, saves inside
:func:`canary_site.audit.audit_context` so the audit trail records who, from where, why and the
diff, bumps the flag's own ``version``, and moves the flags version so that every process
reloads its snapshot (:mod:`flags.snapshot`): its count in the database in the same transaction,
its token in the cache once the transaction has committed, best effort. So a write, a kill above
all, succeeds and is served everywhere whether or not the cache answers. Callers may wrap these
functions in their own transaction (the deployments app sets a flag's rollout in the same
transaction as its phase).

The rule verbs (``flag_rule_add``, ``flag_rule_update``, ``flag_rule_move``,
``flag_rule_delete``) splice the rule list of the row they hold locked, and take the flag's
``version`` as the client read it: a rule is named by its position, so an edit made against a
list that has changed since is refused (409) rather than applied to the wrong rule.

The flag writes other than the kill and the release of control are ``@gates.gated``
(``flags.gating`` describes them): a change an approval policy covers opens an approval request
instead (``canary_site.gates``).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import date, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from canary_site import gates, tokens
from canary_site.audit import audit_context, audit_updates
from canary_site.choices import Source
from canary_site.exceptions import (
    Conflict,
    NotFound,
    TransitionNotAllowed,
    ValidationFailed,
    full_clean,
)
from canary_site.versions import counter_bump
from flags import conf, gating, snapshot
from flags.choices import FlagStatus, FlagType, ValueType
from flags.definition import (
    DEFINITION_FIELDS,
    FULL,
    engine_flag,
    percent_to_basis_points,
    rollout_percentage,
    rollout_variant,
)
from flags.evaluation import (
    DEFAULT_STICKINESS,
    InvalidFlagDefinition,
    build_flag_snapshot,
    build_segment_snapshot,
)
from flags.exposures import recorder
from flags.models import KEY_PATTERN, EvaluationKey, Flag, FlagExposure, FlagsVersion, Segment

EVALUATION_KEY_PREFIX = "cnrye"
BOOLEAN_VARIANTS = [{"name": "on", "value": True}, {"name": "off", "value": False}]
# Fields flag_update changes; the key, the status and the bookkeeping have their own verbs.
FLAG_EDITABLE_FIELDS = (
    "name",
    "description",
    "flag_type",
    *DEFINITION_FIELDS,
    "expires_on",
    "owner",
    "tags",
    "kill_switch_enabled",
)
SEGMENT_EDITABLE_FIELDS = frozenset({"name", "description", "constraints"})
TAG_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,49}\Z")
# Deeper JSON than this is refused before it reaches recursive code (engine, encoder, database).
MAX_JSON_DEPTH = 32
_KEY_RE = re.compile(KEY_PATTERN)


# --- flags --------------------------------------------------------------------------------------


@gates.gated(gating.create)
def flag_create(
    *,
    key: str,
    name: str = "",
    description: str = "",
    flag_type: str = FlagType.RELEASE,
    value_type: str = ValueType.BOOLEAN,
    variants: list[Any] | None = None,
    off_variant: str | None = None,
    rules: list[Any] | None = None,
    default_rule: Mapping[str, Any] | None = None,
    targets: list[Any] | None = None,
    stickiness: str = DEFAULT_STICKINESS,
    salt: str = "",
    expires_on: date | None = None,
    owner: Any = None,
    tags: Iterable[str] | None = None,
    kill_switch_enabled: bool = False,
    status: str = FlagStatus.DISABLED,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> Flag:
    """Create a flag. A boolean flag without variants gets ``on``/``off``, off when disabled and
    on for everyone when enabled; other types must name their variants."""
    key = _clean_key(key)
    if Flag.objects.filter(key=key).exists():
        raise ValidationFailed(f"A flag with key '{key}' already exists.", field="key")
    if status not in (FlagStatus.ENABLED, FlagStatus.DISABLED):
        raise ValidationFailed(
            "A new flag is enabled or disabled; kill it afterwards if you must.", field="status"
        )
    if variants is None and value_type == ValueType.BOOLEAN:
        variants = [dict(variant) for variant in BOOLEAN_VARIANTS]
        off_variant = off_variant or "off"
        if default_rule is None:
            default_rule = {"variant": "on"}
    variants = [] if variants is None else variants
    if (
        off_variant is None
        and isinstance(variants, list)
        and variants
        and isinstance(variants[0], Mapping)
    ):
        off_variant = variants[0].get("name")
    if owner is None and getattr(actor, "is_authenticated", False):
        owner = actor
    now = timezone.now()
    flag = Flag(
        key=key,
        name=name or "",
        description=description or "",
        flag_type=flag_type,
        value_type=value_type,
        status=status,
        variants=variants,
        off_variant=off_variant if isinstance(off_variant, str) else "",
        rules=[] if rules is None else rules,
        default_rule={} if default_rule is None else default_rule,
        targets=[] if targets is None else targets,
        stickiness=stickiness,
        salt=salt or key,
        expires_on=expires_on,
        owner=owner,
        tags=_clean_tags(tags),
        kill_switch_enabled=kill_switch_enabled,
        created_at=now,
        updated_at=now,
    )
    if not isinstance(off_variant, str | None):
        raise ValidationFailed("must be the name of a variant", field="off_variant")
    _validate_flag(flag)
    _track_full_rollout(flag, now)
    with transaction.atomic(), audit_context(actor=actor, source=source, reason=reason):
        _save(flag)
        _flags_changed()
    return flag


@gates.gated(gating.update)
def flag_update(
    *,
    flag: Flag,
    changes: Mapping[str, Any],
    expected_version: int | None = None,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> Flag:
    """Change the editable fields named in ``changes``; nothing else moves. Returns the flag as
    saved (the same row re-read under a lock, so concurrent edits cannot lose one another).

    With ``expected_version`` (the ``version`` the client read), a flag that has changed since
    is refused with :class:`~canary_site.exceptions.Conflict` (409).
    """
    changes = dict(changes)
    if "key" in changes and changes.pop("key") != flag.key:
        raise ValidationFailed(
            "A flag's key cannot change: SDKs ask for it by key. Create a new flag.",
            field="key",
        )
    if "status" in changes:
        raise ValidationFailed("Change the status with enable, disable or kill.", field="status")
    unknown = sorted(set(changes) - set(FLAG_EDITABLE_FIELDS))
    if unknown:
        raise ValidationFailed(
            f"Unknown field: {unknown[0]}.", fields={name: ["Unknown field."] for name in unknown}
        )
    if "tags" in changes:
        changes["tags"] = _clean_tags(changes["tags"])
    for name in ("rules", "targets", "variants"):
        if name in changes and changes[name] is None:
            changes[name] = []
    if "default_rule" in changes and changes["default_rule"] is None:
        changes["default_rule"] = {}
    for name in ("name", "description", "salt"):
        if name in changes and changes[name] is None:
            changes[name] = ""

    with transaction.atomic():
        current = _locked(Flag, flag)
        _check_version(current, expected_version)
        return _apply_changes(current, changes, actor=actor, source=source, reason=reason)


def _apply_changes(
    current: Flag,
    changes: Mapping[str, Any],
    *,
    actor: Any,
    source: str,
    reason: str,
    verb: str = "",
) -> Flag:
    """Set ``changes`` on the locked row, validate, bump its version and save (in the caller's
    transaction); a change to what is already there saves nothing."""
    before = {name: getattr(current, name) for name in changes}
    for name, value in changes.items():
        setattr(current, name, value)
    if all(_same(before[name], getattr(current, name)) for name in changes):
        return current
    if not current.salt:
        current.salt = current.key
    _validate_flag(current)
    now = timezone.now()
    _track_full_rollout(current, now)
    current.version += 1
    current.updated_at = now
    with audit_context(actor=actor, source=source, reason=reason, verb=verb):
        _save(current)
    _flags_changed()
    return current


# --- rules --------------------------------------------------------------------------------------


@gates.gated(gating.rule_add)
def flag_rule_add(
    *,
    flag: Flag,
    rule: Any,
    expected_version: int | None = None,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> Flag:
    """Append ``rule`` to the flag's rules. Without ``expected_version`` it is added to the
    rules as they are when the lock is held (an append cannot land on the wrong rule)."""

    def append(current: Flag, rules: list[Any]) -> int:
        rules.append(_clean_rule(rule))
        return len(rules) - 1

    return _edit_rules(flag, expected_version, append, actor, source, reason, "rule_add")


@gates.gated(gating.rule_update)
def flag_rule_update(
    *,
    flag: Flag,
    index: int,
    rule: Any,
    expected_version: int | None,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> Flag:
    """Replace the rule at ``index`` (0-based) of the flag at ``expected_version``."""

    def replace(current: Flag, rules: list[Any]) -> int:
        rules[_rule_index(current, index)] = _clean_rule(rule)
        return index

    return _edit_rules(flag, expected_version, replace, actor, source, reason, "rule_update")


@gates.gated(gating.rule_move)
def flag_rule_move(
    *,
    flag: Flag,
    index: int,
    to: int,
    expected_version: int | None,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> Flag:
    """Move the rule at ``index`` to position ``to`` (both 0-based); the others keep their order."""

    def move(current: Flag, rules: list[Any]) -> int:
        moved = rules.pop(_rule_index(current, index))
        if type(to) is not int or not 0 <= to <= len(rules):
            raise ValidationFailed(
                f"A rule can move to a position from 0 to {len(rules)}.", field="to"
            )
        rules.insert(to, moved)
        return to

    return _edit_rules(flag, expected_version, move, actor, source, reason, "rule_move")


@gates.gated(gating.rule_delete)
def flag_rule_delete(
    *,
    flag: Flag,
    index: int,
    expected_version: int | None,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> Flag:
    """Delete the rule at ``index`` (0-based) of the flag at ``expected_version``."""

    def delete(current: Flag, rules: list[Any]) -> None:
        rules.pop(_rule_index(current, index))

    return _edit_rules(flag, expected_version, delete, actor, source, reason, "rule_delete")


def _edit_rules(
    flag: Flag,
    expected_version: int | None,
    edit: Callable[[Flag, list[Any]], int | None],
    actor: Any,
    source: str,
    reason: str,
    verb: str,
) -> Flag:
    """Let ``edit`` change the rule list of the flag, locked and at ``expected_version``, and save
    it. ``edit`` returns the position of the rule it wrote, if any: errors about that rule name
    ``rule.<field>``."""
    with transaction.atomic():
        current = _locked(Flag, flag)
        _check_version(current, expected_version)
        rules = list(current.rules)
        position = edit(current, rules)
        return _splice(current, rules, position, actor, source, reason, verb)


def _check_version(current: Flag, expected_version: int | None) -> None:
    if expected_version is None or expected_version == current.version:
        return
    raise Conflict(
        f"Flag '{current.key}' has changed since version {expected_version} "
        f"(it is at version {current.version}); reload it and make the change again.",
        field="version",
    )


def _rule_index(current: Flag, index: Any) -> int:
    if type(index) is not int or not 0 <= index < len(current.rules):
        raise NotFound(f"Flag '{current.key}' has no rule at index {index}.")
    return index


def _clean_rule(rule: Any) -> dict[str, Any]:
    if not isinstance(rule, Mapping):
        raise ValidationFailed(
            "A rule is an object: {name, segments, constraints, serve}.", field="rule"
        )
    return dict(rule)


def _splice(
    current: Flag,
    rules: list[Any],
    position: int | None,
    actor: Any,
    source: str,
    reason: str,
    verb: str,
) -> Flag:
    """Save the new rule list; errors about the rule at ``position`` name ``rule.<field>``."""
    try:
        return _apply_changes(
            current, {"rules": rules}, actor=actor, source=source, reason=reason, verb=verb
        )
    except ValidationFailed as error:
        if position is None:
            raise
        prefix = f"rules[{position}]"
        fields: dict[str, list[str]] = {}
        for path, problems in error.fields.items():
            if path == prefix or path.startswith((f"{prefix}.", f"{prefix}[")):
                path = "rule" + path[len(prefix) :]
            fields.setdefault(path, []).extend(problems)
        raise ValidationFailed(error.message, fields=fields) from None


@gates.gated(gating.delete)
def flag_delete(
    *, flag: Flag, actor: Any = None, source: str = Source.SYSTEM, reason: str = ""
) -> None:
    with transaction.atomic():
        current = _locked(Flag, flag)
        if current.controlled_by:
            raise TransitionNotAllowed(
                f"Flag '{current.key}' is driven by {current.controlled_by}; "
                "release it from there before deleting it."
            )
        with audit_context(actor=actor, source=source, reason=reason, verb="delete"):
            current.delete()
        _flags_changed()


@gates.gated(gating.enable)
def flag_enable(
    *, flag: Flag, actor: Any = None, source: str = Source.SYSTEM, reason: str = ""
) -> Flag:
    """Serve the flag's targeting again; also how a killed flag recovers. Enabling an enabled
    flag changes nothing."""
    with transaction.atomic():
        current = _locked(Flag, flag)
        if current.status == FlagStatus.ENABLED:
            return current
        current.status = FlagStatus.ENABLED
        current.killed_reason = ""
        current.killed_at = None
        return _save_status(current, actor=actor, source=source, reason=reason, verb="enable")


@gates.gated(gating.disable)
def flag_disable(
    *, flag: Flag, actor: Any = None, source: str = Source.SYSTEM, reason: str = ""
) -> Flag:
    """Serve the off variant to everyone. A killed flag stays killed (enable it to recover)."""
    with transaction.atomic():
        current = _locked(Flag, flag)
        if current.status == FlagStatus.DISABLED:
            return current
        if current.status == FlagStatus.KILLED:
            raise TransitionNotAllowed(
                f"Flag '{current.key}' is killed; enable it to recover, or leave it killed."
            )
        current.status = FlagStatus.DISABLED
        return _save_status(current, actor=actor, source=source, reason=reason, verb="disable")


def flag_kill(*, flag: Flag, reason: str, actor: Any = None, source: str = Source.SYSTEM) -> Flag:
    """The emergency disable: serve the off variant to everyone at once, whatever else says.

    The reason is required and kept with the flag. Killing a killed flag changes nothing, so a
    kill switch may fire twice.
    """
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed("Say why the flag is being killed.", field="reason")
    with transaction.atomic():
        current = _locked(Flag, flag)
        if current.status == FlagStatus.KILLED:
            return current
        current.status = FlagStatus.KILLED
        current.killed_reason = reason
        current.killed_at = timezone.now()
        return _save_status(current, actor=actor, source=source, reason=reason, verb="kill")


def flags_kill_many(
    *,
    flags: Iterable[Flag],
    reason: str,
    actor: Any = None,
    source: str = Source.SYSTEM,
    now: Any = None,
) -> dict[int, str]:
    """`flag_kill` for many flags at once (a kill switch), in a fixed number of queries:
    the rows locked in one statement, written in one, audited in one. Flags killed already are
    left as they are. Returns each flag it killed with the status it had, so that
    `flags_restore_many` puts back exactly that."""
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed("Say why the flags are being killed.", field="reason")
    now = now or timezone.now()
    ids = sorted({flag.pk for flag in flags})
    if not ids:
        return {}
    with transaction.atomic():
        rows = list(
            Flag.objects.select_for_update()
            .filter(pk__in=ids)
            .exclude(status=FlagStatus.KILLED)
            .order_by("pk")
        )
        if not rows:
            return {}
        before = {flag.pk: copy.copy(flag) for flag in rows}
        for flag in rows:
            flag.status = FlagStatus.KILLED
            flag.killed_reason = reason[:2000]
            flag.killed_at = now
            flag.version += 1
            flag.updated_at = now
        _write_statuses(rows, before, actor=actor, source=source, reason=reason, verb="kill")
    return {pk: old.status for pk, old in before.items()}


def flags_restore_many(
    *,
    statuses: Mapping[int, str],
    killed_at: Any = None,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
    now: Any = None,
) -> list[str]:
    """Put killed flags back to the status each had (`flags_kill_many`'s answer), in a fixed
    number of queries. Only flags still killed are touched, and with ``killed_at`` only those
    killed at that moment: a flag someone revived, or killed again since, is left alone.
    Returns the keys restored."""
    now = now or timezone.now()
    ids = sorted(int(pk) for pk in statuses)
    if not ids:
        return []
    with transaction.atomic():
        rows = Flag.objects.select_for_update().filter(pk__in=ids, status=FlagStatus.KILLED)
        if killed_at is not None:
            rows = rows.filter(killed_at=killed_at)
        rows = list(rows.order_by("pk"))
        if not rows:
            return []
        before = {flag.pk: copy.copy(flag) for flag in rows}
        for flag in rows:
            flag.status = statuses.get(flag.pk) or statuses.get(str(flag.pk)) or FlagStatus.ENABLED
            flag.killed_reason = ""
            flag.killed_at = None
            flag.version += 1
            flag.updated_at = now
        _write_statuses(rows, before, actor=actor, source=source, reason=reason, verb="restore")
    return [flag.key for flag in rows]


def _write_statuses(
    rows: list[Flag],
    before: Mapping[int, Flag],
    *,
    actor: Any,
    source: str,
    reason: str,
    verb: str,
) -> None:
    Flag.objects.bulk_update(
        rows, ["status", "killed_reason", "killed_at", "version", "updated_at"]
    )
    with audit_context(actor=actor, source=source, reason=reason, verb=verb):
        audit_updates((before[flag.pk], flag, {"reason": reason, "verb": verb}) for flag in rows)
    _flags_changed()


@gates.gated(gating.rollout)
def flag_set_rollout(
    *,
    flag: Flag,
    percentage: float | int | Any,
    variant: str | None = None,
    controlled_by: str | None = None,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> Flag:
    """Serve ``variant`` to ``percentage`` (0 to 100, two decimals) of subjects by default.

    The default rule becomes a rollout; rules and individual targets still come first, and a
    disabled or killed flag keeps serving its off variant. ``variant`` defaults to the variant
    the flag rolls out now, else its first variant that is not the off variant. Raising the
    percentage only adds subjects (monotonic bucketing).

    ``controlled_by`` names who drives the percentage (the deployments app passes
    ``"deployment 12"``): the first call with it takes control, and from then on a call with
    another controller, or none (a person with the slider), is refused with 409 until
    :func:`flag_release_control`.
    """
    try:
        points = percent_to_basis_points(percentage, "percentage")
    except InvalidFlagDefinition as error:
        raise ValidationFailed(error.message, field="percentage") from None
    with transaction.atomic():
        current = _locked(Flag, flag)
        if current.controlled_by and controlled_by != current.controlled_by:
            raise TransitionNotAllowed(
                f"The rollout of flag '{current.key}' is driven by {current.controlled_by}; "
                "release it there first."
            )
        chosen = variant or rollout_variant(
            current.default_rule, current.variants, current.off_variant
        )
        if chosen is None:
            raise ValidationFailed(
                "The flag has no variant besides its off variant to roll out.", field="variant"
            )
        default_rule = {"rollout": {"percentage": points / 100, "variant": chosen}}
        if current.default_rule == default_rule and current.controlled_by == (controlled_by or ""):
            return current
        current.default_rule = default_rule
        current.controlled_by = controlled_by or ""
        try:
            _validate_flag(current)
        except ValidationFailed as error:
            # The only part of the definition this call changes is the variant it names.
            raise ValidationFailed(error.message, field="variant") from None
        now = timezone.now()
        _track_full_rollout(current, now)
        current.version += 1
        current.updated_at = now
        with audit_context(actor=actor, source=source, reason=reason, verb="set_rollout"):
            _save(current)
        _flags_changed()
    return current


def flag_release_control(
    *,
    flag: Flag,
    controlled_by: str | None = None,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> Flag:
    """Hand the rollout back to people. With ``controlled_by``, only if that one holds it (a
    deployment releasing what it took); without, whoever holds it (an engineer taking over)."""
    with transaction.atomic():
        current = _locked(Flag, flag)
        if not current.controlled_by:
            return current
        if controlled_by is not None and controlled_by != current.controlled_by:
            raise TransitionNotAllowed(
                f"The rollout of flag '{current.key}' is driven by {current.controlled_by}, "
                f"not {controlled_by}."
            )
        current.controlled_by = ""
        current.version += 1
        current.updated_at = timezone.now()
        with audit_context(actor=actor, source=source, reason=reason, verb="release_control"):
            _save(current)
        _flags_changed()
    return current


def flag_validate(*, flag: Flag) -> None:
    """Raise ValidationFailed if ``flag`` (saved or not) could not be saved as it stands: for
    forms that validate before they call a write (the admin)."""
    flag.tags = _clean_tags(flag.tags)
    if not flag.salt:
        flag.salt = flag.key
    if flag.pk is None:
        flag.key = _clean_key(flag.key)
    _validate_flag(flag)


# --- segments -----------------------------------------------------------------------------------


def segment_create(
    *,
    key: str,
    name: str = "",
    description: str = "",
    constraints: list[Any] | None = None,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> Segment:
    key = _clean_key(key)
    if Segment.objects.filter(key=key).exists():
        raise ValidationFailed(f"A segment with key '{key}' already exists.", field="key")
    now = timezone.now()
    segment = Segment(
        key=key,
        name=name or "",
        description=description or "",
        constraints=[] if constraints is None else constraints,
        created_at=now,
        updated_at=now,
    )
    _validate_segment(segment)
    with transaction.atomic(), audit_context(actor=actor, source=source, reason=reason):
        _save(segment)
        _flags_changed()
    return segment


def segment_update(
    *,
    segment: Segment,
    changes: Mapping[str, Any],
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> Segment:
    changes = dict(changes)
    if "key" in changes and changes.pop("key") != segment.key:
        raise ValidationFailed(
            "A segment's key cannot change: flag rules name it by key.", field="key"
        )
    unknown = sorted(set(changes) - SEGMENT_EDITABLE_FIELDS)
    if unknown:
        raise ValidationFailed(
            f"Unknown field: {unknown[0]}.", fields={name: ["Unknown field."] for name in unknown}
        )
    if "constraints" in changes and changes["constraints"] is None:
        changes["constraints"] = []
    for name in ("name", "description"):
        if name in changes and changes[name] is None:
            changes[name] = ""
    with transaction.atomic():
        current = _locked(Segment, segment)
        before = {name: getattr(current, name) for name in changes}
        for name, value in changes.items():
            setattr(current, name, value)
        if all(_same(before[name], getattr(current, name)) for name in changes):
            return current
        _validate_segment(current)
        current.version += 1
        current.updated_at = timezone.now()
        with audit_context(actor=actor, source=source, reason=reason):
            _save(current)
        _flags_changed()
    return current


def segment_delete(
    *, segment: Segment, actor: Any = None, source: str = Source.SYSTEM, reason: str = ""
) -> None:
    """Delete a segment that no flag's rule names (a rule naming a missing segment would never
    match, which would silently change who gets what)."""
    from flags.selectors import flags_using_segment

    with transaction.atomic():
        current = _locked(Segment, segment)
        users = [flag.key for flag in flags_using_segment(key=current.key)]
        if users:
            raise TransitionNotAllowed(
                f"Segment '{current.key}' is used by flag(s) {', '.join(users)}; "
                "remove it from their rules first."
            )
        with audit_context(actor=actor, source=source, reason=reason, verb="delete"):
            current.delete()
        _flags_changed()


def segment_validate(*, segment: Segment) -> None:
    """Raise ValidationFailed if ``segment`` could not be saved as it stands."""
    if segment.pk is None:
        segment.key = _clean_key(segment.key)
    _validate_segment(segment)


# --- evaluation keys ----------------------------------------------------------------------------


def evaluation_key_create(
    *,
    name: str,
    rate_limit: int | None = None,
    actor: Any = None,
    source: str = Source.SYSTEM,
) -> tuple[EvaluationKey, str]:
    """Create an OFREP evaluation key; returns the row and the secret, which is never stored."""
    name = (name or "").strip()
    if not name:
        raise ValidationFailed("An evaluation key needs a name.", field="name")
    if rate_limit is not None and (type(rate_limit) is not int or rate_limit < 1):
        raise ValidationFailed(
            "The rate limit is a whole number of evaluations per second, at least 1.",
            field="rate_limit",
        )
    if EvaluationKey.objects.filter(name=name, revoked_at__isnull=True).exists():
        raise ValidationFailed(f"An active key named '{name}' already exists.", field="name")
    secret = tokens.new_secret(EVALUATION_KEY_PREFIX)
    key = EvaluationKey(
        name=name,
        prefix=secret[: len(EVALUATION_KEY_PREFIX) + 6],
        digest=tokens.digest(secret),
        rate_limit=rate_limit,
        created_by=actor if getattr(actor, "is_authenticated", False) else None,
    )
    full_clean(key)
    with transaction.atomic(), audit_context(actor=actor, source=source, verb="create"):
        _save(key)
        _flags_changed()
    return key, secret


def evaluation_key_revoke(
    *, key_id: int, actor: Any = None, source: str = Source.SYSTEM
) -> EvaluationKey:
    """Revoke a key: every process refuses it (403) once it has reloaded its snapshot."""
    with transaction.atomic():
        key = EvaluationKey.objects.filter(pk=key_id, revoked_at__isnull=True).first()
        if key is None:
            raise NotFound("No active evaluation key with that id.")
        key.revoked_at = timezone.now()
        with audit_context(actor=actor, source=source, verb="revoke"):
            key.save(update_fields=["revoked_at"])
        _flags_changed()
    return key


# --- exposures ----------------------------------------------------------------------------------


def flag_exposures_flush() -> int:
    """Write this process's waiting exposure counts now; returns the rows written."""
    return recorder.flush()


def flag_exposures_prune(*, older_than_days: int | None = None) -> int:
    """Delete exposure counts older than the retention (CANARY_FLAGS_EXPOSURE_RETENTION_DAYS)."""
    days = conf.exposure_retention_days() if older_than_days is None else older_than_days
    cutoff = timezone.now() - timedelta(days=days)
    deleted, _ = FlagExposure.objects.filter(bucket_start__lt=cutoff).delete()
    return deleted


# --- helpers ------------------------------------------------------------------------------------


def _flags_changed() -> None:
    # The count first, in the caller's transaction; the cache's token after commit.
    with transaction.atomic(savepoint=False):
        counter_bump(FlagsVersion)
        snapshot.version_changed()


def _same(before: Any, after: Any) -> bool:
    # JSON-aware equality: in Python True == 1 and 1 == 1.0, which are different flag values.
    return json.dumps(before, sort_keys=True, default=str) == json.dumps(
        after, sort_keys=True, default=str
    )


def _locked(model: type[Any], instance: Any) -> Any:
    current = model.objects.select_for_update().filter(pk=instance.pk).first()
    if current is None:
        raise NotFound(f"{model._meta.verbose_name.capitalize()} '{instance}' no longer exists.")
    return current


def _save(instance: Any) -> None:
    try:
        instance.save()
    except IntegrityError as error:
        # Two creates of one key racing past the existence check.
        raise ValidationFailed("That key is already taken.", field="key") from error


def _save_status(current: Flag, *, actor: Any, source: str, reason: str, verb: str) -> Flag:
    now = timezone.now()
    _track_full_rollout(current, now)
    current.version += 1
    current.updated_at = now
    full_clean(current)
    with audit_context(actor=actor, source=source, reason=reason, verb=verb):
        _save(current)
    _flags_changed()
    return current


def _clean_key(key: Any) -> str:
    if not isinstance(key, str) or not key.strip():
        raise ValidationFailed("A key is required.", field="key")
    key = key.strip()
    if len(key) > 100:
        raise ValidationFailed("A key has at most 100 characters.", field="key")
    if not _KEY_RE.match(key):
        raise ValidationFailed(
            "Use letters, digits, '-', '_' and '.', starting with a letter or digit.",
            field="key",
        )
    return key


def _clean_tags(tags: Any) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str):
        tags = [part for part in re.split(r"[,\s]+", tags) if part]
    if not isinstance(tags, list | tuple | set | frozenset):
        raise ValidationFailed("Tags are a list of words.", field="tags")
    cleaned: list[str] = []
    for index, tag in enumerate(tags):
        text = tag.strip().lower() if isinstance(tag, str) else ""
        if not TAG_PATTERN.match(text):
            raise ValidationFailed(
                "A tag is up to 50 lower-case letters, digits, '-', '_', '.' or ':'.",
                field=f"tags[{index}]",
            )
        if text not in cleaned:
            cleaned.append(text)
    return cleaned


def _check_depth(value: Any, field: str) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValidationFailed(f"is nested more than {MAX_JSON_DEPTH} levels deep", field=field)
        if isinstance(item, Mapping):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)


def _validate_flag(flag: Flag) -> None:
    """The engine's checks (naming its field), the segments the rules name, then the model's."""
    for name in ("variants", "rules", "default_rule", "targets"):
        _check_depth(getattr(flag, name), name)
    if flag.flag_type not in FlagType.values:
        raise ValidationFailed(f"Must be one of {', '.join(FlagType.values)}.", field="flag_type")
    data = {
        "key": flag.key,
        "status": flag.status,
        "value_type": flag.value_type,
        "variants": flag.variants,
        "off_variant": flag.off_variant,
        "rules": flag.rules,
        "default_rule": flag.default_rule,
        "targets": flag.targets,
        "stickiness": flag.stickiness,
        "salt": flag.salt,
        "version": flag.version,
    }
    if not isinstance(flag.default_rule, Mapping):
        raise ValidationFailed("must be an object", field="default_rule")
    try:
        build_flag_snapshot(engine_flag(data))
    except InvalidFlagDefinition as error:
        raise ValidationFailed(error.message, field=error.field or "definition") from None
    except (TypeError, ValueError, ArithmeticError, RecursionError) as error:
        # The engine names the field of everything it foresees; this is for what it did not.
        raise ValidationFailed(f"is not a valid definition: {error}", field="definition") from None
    _check_segments_exist(flag.rules)
    full_clean(flag)


def _check_segments_exist(rules: list[Any]) -> None:
    named = {
        (index, position): key
        for index, rule in enumerate(rules)
        for position, key in enumerate(rule.get("segments") or [])
    }
    if not named:
        return
    known = set(Segment.objects.filter(key__in=set(named.values())).values_list("key", flat=True))
    for (index, position), key in named.items():
        if key not in known:
            raise ValidationFailed(
                f"There is no segment '{key}'.", field=f"rules[{index}].segments[{position}]"
            )


def _validate_segment(segment: Segment) -> None:
    _check_depth(segment.constraints, "constraints")
    try:
        build_segment_snapshot(
            {"key": segment.key, "name": segment.name, "constraints": segment.constraints}
        )
    except InvalidFlagDefinition as error:
        raise ValidationFailed(error.message, field=error.field or "constraints") from None
    full_clean(segment)


def _track_full_rollout(flag: Flag, now: Any) -> None:
    """Remember when the flag started serving its "on" side to everyone (for staleness)."""
    serving_everyone = (
        flag.status == FlagStatus.ENABLED
        and rollout_percentage(flag.default_rule, flag.off_variant) == FULL
    )
    if not serving_everyone:
        flag.full_rollout_since = None
    elif flag.full_rollout_since is None:
        flag.full_rollout_since = now
