"""Routes of the site's own API under /api/v1/."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from canary_site.api import views

router = SimpleRouter()
router.register("audit", views.AuditEntryViewSet, basename="audit")
router.register("tokens", views.ApiTokenViewSet, basename="token")

urlpatterns = [
    path("", views.ApiRootView.as_view(), name="root"),
    path("me/", views.MeView.as_view(), name="me"),
    *router.urls,
]
