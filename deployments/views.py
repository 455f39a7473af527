"""Dashboard pages of the deployments app."""

from django.views.generic import TemplateView

from canary_site.roles import RoleRequiredMixin


class IndexView(RoleRequiredMixin, TemplateView):
    template_name = "deployments/index.html"
