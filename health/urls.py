"""Dashboard URLs of the health app."""

from django.urls import path

from health import views

app_name = "health"

urlpatterns = [
    path("", views.IndexView.as_view(), name="index"),
]
