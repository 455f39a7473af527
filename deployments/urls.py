"""Dashboard URLs of the deployments app."""

from django.urls import path

from deployments import views

app_name = "deployments"

urlpatterns = [
    path("", views.IndexView.as_view(), name="index"),
]
