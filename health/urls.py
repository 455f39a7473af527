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
]
