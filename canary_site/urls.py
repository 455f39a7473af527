"""Root URLs: the dashboard, the admin, the REST API with its schema, and the process probes."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from canary_site import metrics, overview, views

site_patterns = (
    [
        path("", overview.OverviewView.as_view(), name="overview"),
        path("audit/", views.AuditListView.as_view(), name="audit-list"),
        path("profile/", views.ProfileView.as_view(), name="profile"),
        path(
            "profile/tokens/<int:token_id>/revoke/",
            views.TokenRevokeView.as_view(),
            name="token-revoke",
        ),
    ],
    "canary_site",
)

api_patterns = (
    [
        path("", include("canary_site.api.urls")),
        path("", include("flags.api.urls")),
        path("", include("routing.api.urls")),
        path("", include("health.api.urls")),
        path("", include("deployments.api.urls")),
        path("", include("rollback.api.urls")),
    ],
    "api",
)

urlpatterns = [
    path("", include(site_patterns)),
    path("flags/", include("flags.urls")),
    path("routing/", include("routing.urls")),
    path("health/", include("health.urls")),
    path("deployments/", include("deployments.urls")),
    path("rollback/", include("rollback.urls")),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_patterns)),
    path("ofrep/v1/", include("flags.ofrep_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="prometheus-django-metrics"),
]

handler400 = "canary_site.views.bad_request"
handler403 = "canary_site.views.permission_denied"
handler404 = "canary_site.views.page_not_found"
handler500 = "canary_site.views.server_error"
