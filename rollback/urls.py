"""Dashboard URLs of the rollback app."""

from django.urls import path

from rollback import views

app_name = "rollback"

urlpatterns = [
    path("", views.InboxView.as_view(), name="index"),
    path("approvals/mine/", views.MineView.as_view(), name="approval-mine"),
    path("approvals/badge/", views.BadgeView.as_view(), name="approval-badge"),
    path("approvals/<int:request_id>/", views.DetailView.as_view(), name="approval-detail"),
    path("approvals/<int:request_id>/decide/", views.DecideView.as_view(), name="approval-decide"),
    path("approvals/<int:request_id>/cancel/", views.CancelView.as_view(), name="approval-cancel"),
]
