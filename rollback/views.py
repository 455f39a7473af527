"""Dashboard pages of the rollback app."""

from django.views.generic import TemplateView

from canary_site.roles import RoleRequiredMixin


class IndexView(RoleRequiredMixin, TemplateView):
    template_name = "rollback/index.html"
