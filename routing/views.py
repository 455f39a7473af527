"""Dashboard pages of the routing app."""

from django.views.generic import TemplateView

from canary_site.roles import RoleRequiredMixin


class IndexView(RoleRequiredMixin, TemplateView):
    template_name = "routing/index.html"
