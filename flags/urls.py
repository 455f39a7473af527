"""Dashboard URLs of the flags app.

A flag's pages live at ``/flags/<key>/``; pages that are not a flag's sit under ``/flags/-/``,
since no flag key can start with '-'.
"""

from django.urls import path

from flags import views

app_name = "flags"

urlpatterns = [
    path("", views.FlagListView.as_view(), name="index"),
    path("-/new/", views.FlagCreateView.as_view(), name="flag-create"),
    path("-/segments/", views.SegmentListView.as_view(), name="segment-list"),
    path("-/segments/new/", views.SegmentEditView.as_view(), name="segment-create"),
    path("-/segments/<str:key>/", views.SegmentEditView.as_view(), name="segment-detail"),
    path("-/segments/<str:key>/delete/", views.SegmentDeleteView.as_view(), name="segment-delete"),
    path("-/keys/", views.EvaluationKeyListView.as_view(), name="key-list"),
    path("-/keys/<int:key_id>/revoke/", views.EvaluationKeyRevokeView.as_view(), name="key-revoke"),
    path("<str:key>/", views.FlagDetailView.as_view(), name="flag-detail"),
    path("<str:key>/toggle/", views.FlagToggleView.as_view(), name="flag-toggle"),
    path("<str:key>/kill/", views.FlagKillView.as_view(), name="flag-kill"),
    path("<str:key>/details/", views.FlagDetailsView.as_view(), name="flag-details"),
    path("<str:key>/variants/", views.FlagVariantsView.as_view(), name="flag-variants"),
    path("<str:key>/rollout/", views.FlagRolloutView.as_view(), name="flag-rollout"),
    path("<str:key>/default-rule/", views.FlagDefaultRuleView.as_view(), name="flag-default-rule"),
    path("<str:key>/targets/", views.FlagTargetsView.as_view(), name="flag-targets"),
    path("<str:key>/try/", views.FlagTryView.as_view(), name="flag-try"),
    path("<str:key>/exposures/", views.FlagExposuresView.as_view(), name="flag-exposures"),
    path("<str:key>/delete/", views.FlagDeleteView.as_view(), name="flag-delete"),
    path("<str:key>/rules/new/", views.RuleEditView.as_view(), name="rule-create"),
    path("<str:key>/rules/<int:index>/", views.RuleEditView.as_view(), name="rule-edit"),
    path("<str:key>/rules/<int:index>/change/", views.RuleChangeView.as_view(), name="rule-change"),
]
