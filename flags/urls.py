"""Dashboard URLs of the flags app."""

from django.urls import path

from flags import views

app_name = "flags"

urlpatterns = [
    path("", views.IndexView.as_view(), name="index"),
]
