"""Dashboard URLs of the routing app."""

from django.urls import path

from routing import views

app_name = "routing"

urlpatterns = [
    path("", views.IndexView.as_view(), name="index"),
    path("services/<slug:name>/", views.ServiceDetailView.as_view(), name="service-detail"),
    path("services/<slug:name>/decide/", views.DecideView.as_view(), name="service-decide"),
    path("rules/<int:rule_id>/", views.RuleEditView.as_view(), name="rule-edit"),
    path("rules/<int:rule_id>/weights/", views.RuleWeightsView.as_view(), name="rule-weights"),
]
