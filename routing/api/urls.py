"""REST routes of the routing app, mounted under /api/v1/ in the "api" namespace."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from canary_site.api.routes import optional_slash
from routing.api import views

router = SimpleRouter()
router.register("routing/services", views.ServiceViewSet, basename="routing-service")
router.register("routing/targets", views.TargetViewSet, basename="routing-target")
router.register("routing/rules", views.RuleViewSet, basename="routing-rule")

urlpatterns = [
    *optional_slash("routing/decide", views.DecideView.as_view(), name="routing-decide"),
    path(
        "routing/services/<slug:name>/nginx.conf",
        views.NginxConfigView.as_view(),
        name="routing-service-nginx",
    ),
    path(
        "routing/services/<slug:name>/haproxy.cfg",
        views.HaproxyConfigView.as_view(),
        name="routing-service-haproxy",
    ),
    *router.urls,
]
