"""REST routes of the rollback app, mounted under /api/v1/ in the "api" namespace."""

urlpatterns: list = []
