"""App config of the flags app."""

import atexit

from django.apps import AppConfig
from django.core.signals import request_finished


class FlagsConfig(AppConfig):
    name = "flags"
    verbose_name = "Flags"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from canary_site.metrics import register_collector
        from flags.exposures import recorder
        from flags.metrics import collector

        # /metrics reads this app's state from the database at scrape time.
        register_collector(collector)

        # Exposure counts go out after a response has been sent, never in its way, and once more
        # when the process exits.
        request_finished.connect(
            recorder.flush_if_due, weak=False, dispatch_uid="flags_exposure_flush"
        )
        atexit.register(recorder.flush)
