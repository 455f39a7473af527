"""REST routes of the flags app, mounted under /api/v1/ in the "api" namespace."""

from rest_framework.routers import SimpleRouter

from flags.api import views

router = SimpleRouter()
router.register("flags", views.FlagViewSet, basename="flag")
router.register("segments", views.SegmentViewSet, basename="segment")

urlpatterns = router.urls
