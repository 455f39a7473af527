"""Dashboard URLs of the routing app."""

from django.urls import path

from routing import views

app_name = "routing"

urlpatterns = [
    path("", views.IndexView.as_view(), name="index"),
]
