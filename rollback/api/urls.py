"""REST routes of the rollback app, mounted under /api/v1/ in the "api" namespace."""

from rest_framework.routers import SimpleRouter

from rollback.api import views

router = SimpleRouter()
router.register("approvals", views.ApprovalRequestViewSet, basename="approval")
router.register("approval-policies", views.ApprovalPolicyViewSet, basename="approval-policy")

urlpatterns = router.urls
