"""REST routes of the health app, mounted under /api/v1/ in the "api" namespace."""

urlpatterns: list = []
