"""REST routes of the deployments app, mounted under /api/v1/ in the "api" namespace."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from canary_site.api.routes import optional_slash
from deployments.api import views

router = SimpleRouter()
router.register("deployments", views.DeploymentViewSet, basename="deployment")

urlpatterns = [
    *optional_slash("validate", views.ValidateView.as_view(), name="validate"),
    path(
        "deployments/<int:pk>/config.yaml",
        views.DeploymentConfigYamlView.as_view(),
        name="deployment-config-yaml",
    ),
    *router.urls,
]
