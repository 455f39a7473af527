"""OFREP routes, mounted at /ofrep/v1/ by the root URLs."""

from django.urls import path

from flags import ofrep

app_name = "ofrep"

urlpatterns = [
    path("evaluate/flags", ofrep.evaluate_flags, name="evaluate-flags"),
    path("evaluate/flags/<str:key>", ofrep.evaluate_flag, name="evaluate-flag"),
    path("configuration", ofrep.configuration, name="configuration"),
]
