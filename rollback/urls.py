"""Dashboard URLs of the rollback app."""

from django.urls import path

from rollback import views

app_name = "rollback"

urlpatterns = [
    path("", views.IndexView.as_view(), name="index"),
]
