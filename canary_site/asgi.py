"""ASGI entry point for uvicorn deployments of the web process."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "canary_site.settings")

application = get_asgi_application()
