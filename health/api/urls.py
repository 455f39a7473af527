"""REST routes of the health app, mounted under /api/v1/ in the "api" namespace."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from canary_site.api.routes import optional_slash
from health.api import views

router = SimpleRouter()
router.register("health/policies", views.HealthPolicyViewSet, basename="health-policy")
router.register("health/checks", views.HealthCheckViewSet, basename="health-check")
router.register("health/alerts", views.AlertViewSet, basename="health-alert")

urlpatterns = [
    *optional_slash("health/metrics", views.MetricsPushView.as_view(), name="health-metrics"),
    path("health/series/", views.SeriesView.as_view(), name="health-series"),
    *router.urls,
]
