"""What a flag change looks like to an approver: the approval gate's view of the flags
services (`canary_site.gates`).

The version is the flag's own ``version`` (bumped by every write), or ``new`` for a flag to be
created; the scope is the flag's tags. The kill is never gated, and a rollout a deployment
drives (``controlled_by``) is the deployment's action, gated as such.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from canary_site import gates
from canary_site.exceptions import NotFound
from flags.models import Flag

NEW = "new"


def _current(arguments: Mapping[str, Any]) -> Flag:
    flag = arguments.get("flag")
    found = Flag.objects.filter(pk=getattr(flag, "pk", None)).first()
    if found is None:
        raise NotFound(f"There is no flag '{getattr(flag, 'key', flag)}'.")
    return found


def _change(action: str, flag: Flag, before: dict[str, Any], after: dict[str, Any]) -> gates.Change:
    return gates.Change(
        action=action,
        object_type="flags.flag",
        object_id=str(flag.pk),
        object_repr=f"flag {flag.key}",
        version=str(flag.version),
        before=gates.plain(before),
        after=gates.plain(after),
        tags=tuple(flag.tags or ()),
    )


class CreateDescriber:
    def action(self, arguments: Mapping[str, Any]) -> str | None:
        return "flag.create"

    def describe(self, arguments: Mapping[str, Any]) -> gates.Change:
        key = str(arguments.get("key") or "")
        exists = Flag.objects.filter(key=key).exists()
        after = {
            name: value
            for name, value in arguments.items()
            if name not in ("actor", "source", "reason") and value not in (None, "", [], {})
        }
        return gates.Change(
            action="flag.create",
            object_type="flags.flag",
            object_id=key,
            object_repr=f"flag {key}",
            version="exists" if exists else NEW,
            before={},
            after=gates.plain(after),
            tags=tuple(str(tag) for tag in arguments.get("tags") or ()),
        )


class UpdateDescriber:
    def action(self, arguments: Mapping[str, Any]) -> str | None:
        return "flag.update"

    def describe(self, arguments: Mapping[str, Any]) -> gates.Change:
        flag = _current(arguments)
        changes = dict(arguments.get("changes") or {})
        before = {name: getattr(flag, name, None) for name in changes}
        return _change("flag.update", flag, before, changes)


class RulesDescriber:
    """The rule verbs: the rule list before and after the splice."""

    def __init__(self, verb: str) -> None:
        self.verb = verb

    def action(self, arguments: Mapping[str, Any]) -> str | None:
        return "flag.update"

    def describe(self, arguments: Mapping[str, Any]) -> gates.Change:
        flag = _current(arguments)
        rules = list(flag.rules or [])
        after = list(rules)
        index = arguments.get("index")
        try:
            if self.verb == "add":
                after.append(arguments.get("rule"))
            elif self.verb == "update":
                after[index] = arguments.get("rule")
            elif self.verb == "move":
                after.insert(arguments.get("to"), after.pop(index))
            else:
                after.pop(index)
        except (IndexError, TypeError):
            # The service refuses the index itself; the request shows what was asked.
            after = [{"rule": self.verb, "index": index, "given": arguments.get("rule")}]
        return _change("flag.update", flag, {"rules": rules}, {"rules": after})


class StatusDescriber:
    def __init__(self, status: str) -> None:
        self.status = status

    def action(self, arguments: Mapping[str, Any]) -> str | None:
        return "flag.enable" if self.status == "enabled" else "flag.disable"

    def describe(self, arguments: Mapping[str, Any]) -> gates.Change:
        flag = _current(arguments)
        return _change(
            self.action(arguments) or "", flag, {"status": flag.status}, {"status": self.status}
        )


class RolloutDescriber:
    def action(self, arguments: Mapping[str, Any]) -> str | None:
        return None if arguments.get("controlled_by") else "flag.rollout"

    def describe(self, arguments: Mapping[str, Any]) -> gates.Change:
        flag = _current(arguments)
        after = {"rollout": {"percentage": arguments.get("percentage")}}
        if arguments.get("variant"):
            after["rollout"]["variant"] = arguments["variant"]
        return _change("flag.rollout", flag, {"default_rule": flag.default_rule}, after)


class DeleteDescriber:
    def action(self, arguments: Mapping[str, Any]) -> str | None:
        return "flag.delete"

    def describe(self, arguments: Mapping[str, Any]) -> gates.Change:
        flag = _current(arguments)
        return _change(
            "flag.delete", flag, {"key": flag.key, "status": flag.status}, {"deleted": True}
        )


create = CreateDescriber()
update = UpdateDescriber()
rule_add = RulesDescriber("add")
rule_update = RulesDescriber("update")
rule_move = RulesDescriber("move")
rule_delete = RulesDescriber("delete")
enable = StatusDescriber("enabled")
disable = StatusDescriber("disabled")
rollout = RolloutDescriber()
delete = DeleteDescriber()
