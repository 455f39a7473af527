"""REST routes of the flags app, mounted under /api/v1/ in the "api" namespace."""

urlpatterns: list = []
