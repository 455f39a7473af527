"""How a deployment is rolled back: the built-in immediate way, or a runner a higher app plugs
in (the rollback app's plans and executions).

The deployments app knows no plan. When a rollback begins, `deployments_transition` asks the
registered runner how each deployment leaves traffic (`Runner.handling`, once for the whole
batch) and tells it, in the same transaction, which rollbacks began (`Runner.begin`), so an
execution exists exactly when its rollback does. With no runner registered, or for a
deployment the runner hands back, the built-in way holds: the canary out of traffic at once,
its linked flags off, and the rollback finished by the same tick.

A runner that takes a rollback over marks the deployment with its name
(``Deployment.rollback_runner``); then only a request carrying that name may step the canary's
share down, finish or fail the rollback, and the tick leaves the deployment to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from deployments.models import Deployment, DeploymentEvent


@dataclass(frozen=True)
class Handling:
    """How one rollback begins. ``traffic_now``: the canary's weight to 0 in the rollback's own
    transaction; ``flags_now``: its linked flags off there too; ``runner``: who finishes the
    rollback (empty: the tick, at once)."""

    traffic_now: bool = True
    flags_now: bool = True
    runner: str = ""


BUILT_IN = Handling()


@dataclass(frozen=True)
class Begun:
    """One rollback that began in a transition batch, as the runner's `begin` sees it."""

    deployment: Deployment
    handling: Handling
    trigger: str
    reason: str
    evidence: dict[str, Any]
    actor: Any
    source: str
    now: datetime
    event: DeploymentEvent | None = None
    # The phases' shares before the rollback, in phase order, for a phased plan.
    earlier_shares: tuple[Any, ...] = field(default=())
    share: Any = None


class Runner(Protocol):
    def handling(
        self, deployments: Sequence[Deployment], triggers: dict[int, str]
    ) -> dict[int, Handling]:
        """How each deployment's rollback begins, for ``triggers`` (automatic, manual,
        kill_switch) by deployment id, in a number of queries that does not grow with them;
        a deployment left out is rolled back the built-in way."""
        ...

    def begin(self, begun: Sequence[Begun]) -> None:
        """Record the rollbacks that began, inside the batch's transaction."""
        ...


_runner: Runner | None = None


def register(runner: Runner | None) -> None:
    """Plug ``runner`` in (the rollback app does when it is ready); None unplugs it."""
    global _runner
    _runner = runner


def handling(deployments: Sequence[Deployment], triggers: dict[int, str]) -> dict[int, Handling]:
    if _runner is None or not deployments:
        return {}
    return _runner.handling(deployments, triggers)


def begin(begun: Sequence[Begun]) -> None:
    if _runner is not None and begun:
        _runner.begin(begun)
