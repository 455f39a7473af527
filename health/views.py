"""Dashboard pages of the health app."""

from django.views.generic import TemplateView

from canary_site.roles import RoleRequiredMixin


class IndexView(RoleRequiredMixin, TemplateView):
    template_name = "health/index.html"
