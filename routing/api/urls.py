"""REST routes of the routing app, mounted under /api/v1/ in the "api" namespace."""

urlpatterns: list = []
