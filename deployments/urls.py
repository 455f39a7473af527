"""Dashboard URLs of the deployments app."""

from django.urls import path

from deployments import views

app_name = "deployments"

urlpatterns = [
    path("", views.IndexView.as_view(), name="index"),
    path("new/", views.WizardView.as_view(), name="deployment-create"),
    path("new/validate/", views.WizardValidateView.as_view(), name="deployment-validate"),
    path("statistics/", views.StatisticsView.as_view(), name="statistics"),
    path("<int:deployment_id>/", views.DetailView.as_view(), name="deployment-detail"),
    path("<int:deployment_id>/row/", views.RowView.as_view(), name="deployment-row"),
    path("<int:deployment_id>/act/", views.ActionView.as_view(), name="deployment-act"),
    path(
        "<int:deployment_id>/gates/<str:name>/open/",
        views.GateOpenView.as_view(),
        name="deployment-gate-open",
    ),
]
