"""REST routes of the rollback app, mounted under /api/v1/ in the "api" namespace.

``deployments/{id}/rollback/`` lives here, not in the deployments app, which may not import
this one; the deployments router has no route of that shape, so the two never meet."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from rollback.api import killswitches, views

router = SimpleRouter()
# Activations before the switches, so "activations" is never taken for a switch's id (nor is
# "kill-all": the router puts a viewset's own list routes before its detail route).
router.register(
    "kill-switches/activations",
    killswitches.KillSwitchActivationViewSet,
    basename="kill-switch-activation",
)
router.register("kill-switches", killswitches.KillSwitchViewSet, basename="kill-switch")
router.register("approvals", views.ApprovalRequestViewSet, basename="approval")
router.register("approval-policies", views.ApprovalPolicyViewSet, basename="approval-policy")
router.register("rollback/plans", views.RollbackPlanViewSet, basename="rollback-plan")
router.register(
    "rollback/executions", views.RollbackExecutionViewSet, basename="rollback-execution"
)

urlpatterns = [
    path(
        "rollback/statistics/", views.RollbackStatisticsView.as_view(), name="rollback-statistics"
    ),
    path(
        "deployments/<int:pk>/rollback/",
        views.DeploymentRollbackView.as_view(),
        name="deployment-rollback",
    ),
    *router.urls,
]
