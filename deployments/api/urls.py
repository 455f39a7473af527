"""REST routes of the deployments app, mounted under /api/v1/ in the "api" namespace."""

urlpatterns: list = []
