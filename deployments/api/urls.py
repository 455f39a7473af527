"""REST routes of the deployments app, mounted under /api/v1/ in the "api" namespace."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from deployments.api import views

router = SimpleRouter()
router.register("deployments", views.DeploymentViewSet, basename="deployment")

urlpatterns = [
    path("validate", views.ValidateView.as_view(), name="validate"),
    path("validate/", views.ValidateSlashView.as_view(), name="validate-slash"),
    path(
        "deployments/<int:pk>/config.yaml",
        views.DeploymentConfigYamlView.as_view(),
        name="deployment-config-yaml",
    ),
    *router.urls,
]
