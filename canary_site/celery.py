"""The Celery application: workers run the tasks, beat is the control loop's clock."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "canary_site.settings")

app = Celery("canary")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
