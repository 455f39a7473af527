"""Dashboard URLs of the rollback app."""

from django.urls import path

from rollback import killswitch_views as switches
from rollback import views

app_name = "rollback"

urlpatterns = [
    path("kill-switches/", switches.KillSwitchListView.as_view(), name="killswitch-list"),
    path("kill-switches/new/", switches.KillSwitchEditorView.as_view(), name="killswitch-create"),
    path(
        "kill-switches/validate/",
        switches.KillSwitchValidateView.as_view(),
        name="killswitch-validate",
    ),
    path("kill-switches/kill-all/", switches.KillAllView.as_view(), name="killswitch-kill-all"),
    path(
        "kill-switches/<int:switch_id>/",
        switches.KillSwitchDetailView.as_view(),
        name="killswitch-detail",
    ),
    path(
        "kill-switches/<int:switch_id>/edit/",
        switches.KillSwitchUpdateView.as_view(),
        name="killswitch-update",
    ),
    path(
        "kill-switches/<int:switch_id>/delete/",
        switches.KillSwitchDeleteView.as_view(),
        name="killswitch-delete",
    ),
    path(
        "kill-switches/<int:switch_id>/trigger/",
        switches.KillSwitchTriggerView.as_view(),
        name="killswitch-trigger",
    ),
    path(
        "kill-switches/<int:switch_id>/recover/",
        switches.KillSwitchRecoverView.as_view(),
        name="killswitch-recover",
    ),
    path("", views.InboxView.as_view(), name="index"),
    path("approvals/mine/", views.MineView.as_view(), name="approval-mine"),
    path("approvals/badge/", views.BadgeView.as_view(), name="approval-badge"),
    path("approvals/<int:request_id>/", views.DetailView.as_view(), name="approval-detail"),
    path("approvals/<int:request_id>/decide/", views.DecideView.as_view(), name="approval-decide"),
    path("approvals/<int:request_id>/cancel/", views.CancelView.as_view(), name="approval-cancel"),
    path("plans/", views.PlanListView.as_view(), name="plan-list"),
    path("plans/new/", views.PlanEditorView.as_view(), name="plan-create"),
    path("plans/validate/", views.PlanValidateView.as_view(), name="plan-validate"),
    path("plans/<int:plan_id>/", views.PlanDetailView.as_view(), name="plan-detail"),
    path("plans/<int:plan_id>/edit/", views.PlanUpdateView.as_view(), name="plan-update"),
    path("plans/<int:plan_id>/delete/", views.PlanDeleteView.as_view(), name="plan-delete"),
    path("plans/<int:plan_id>/rehearse/", views.PlanRehearseView.as_view(), name="plan-rehearse"),
    path("impact/", views.ImpactView.as_view(), name="impact"),
    path("executions/", views.ExecutionListView.as_view(), name="execution-list"),
    path(
        "executions/<int:execution_id>/",
        views.ExecutionDetailView.as_view(),
        name="execution-detail",
    ),
    path(
        "executions/<int:execution_id>/cancel/",
        views.ExecutionCancelView.as_view(),
        name="execution-cancel",
    ),
    path("statistics/", views.StatisticsView.as_view(), name="statistics"),
    path(
        "deployments/<int:deployment_id>/panel/",
        views.DeploymentPanelView.as_view(),
        name="deployment-panel",
    ),
    path(
        "deployments/<int:deployment_id>/rollback/",
        views.DeploymentRollbackView.as_view(),
        name="deployment-rollback",
    ),
]
