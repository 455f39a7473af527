"""Dashboard URLs of the health app."""

from django.urls import path

from health import views

app_name = "health"

urlpatterns = [
    path("", views.IndexView.as_view(), name="index"),
    path("services/<str:service>/", views.ServiceHealthView.as_view(), name="service-detail"),
    path(
        "alerts/<int:alert_id>/acknowledge/",
        views.AlertActionView.as_view(action="acknowledge"),
        name="alert-acknowledge",
    ),
    path(
        "alerts/<int:alert_id>/resolve/",
        views.AlertActionView.as_view(action="resolve"),
        name="alert-resolve",
    ),
    path("policies/", views.PolicyListView.as_view(), name="policy-list"),
    path("policies/new/", views.PolicyEditorView.as_view(), name="policy-create"),
    path("policies/validate/", views.PolicyValidateView.as_view(), name="policy-validate"),
    path("policies/<int:policy_id>/", views.PolicyDetailView.as_view(), name="policy-detail"),
    path("policies/<int:policy_id>/edit/", views.PolicyUpdateView.as_view(), name="policy-update"),
    path(
        "policies/<int:policy_id>/delete/", views.PolicyDeleteView.as_view(), name="policy-delete"
    ),
]
