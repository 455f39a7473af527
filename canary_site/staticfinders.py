"""Serves plotly.js from the installed plotly package, so no page loads a script from a CDN.

(htmx comes from django-htmx's own static files through the app directories finder.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly
from django.contrib.staticfiles.finders import BaseFinder
from django.core.files.storage import FileSystemStorage

VENDOR_FILES = {
    "vendor/plotly.min.js": Path(plotly.__file__).parent / "package_data" / "plotly.min.js",
}


class VendorFinder(BaseFinder):
    def check(self, **kwargs: Any) -> list[Any]:
        return []

    def find(self, path: str, find_all: bool = False, **kwargs: Any) -> str | list[str]:
        found = VENDOR_FILES.get(path)
        if found is None or not found.exists():
            return [] if find_all else ""
        return [str(found)] if find_all else str(found)

    def list(self, ignore_patterns: Any) -> Any:
        for name, path in VENDOR_FILES.items():
            storage = FileSystemStorage(location=str(path.parent))
            storage.prefix = str(Path(name).parent)
            yield path.name, storage
