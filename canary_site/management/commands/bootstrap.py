"""Creates the roles and, on an embedded install, a local admin account whose password is
printed once. Safe to run again: an existing account is left alone."""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from canary_site import roles, services
from canary_site.choices import Role


class Command(BaseCommand):
    help = "Create the role groups and, on an embedded install, a local admin account."

    def handle(self, *args: Any, **options: Any) -> None:
        roles.sync_role_permissions()
        if not settings.EMBEDDED:
            self.stdout.write(
                "Roles are in place. Create accounts with 'manage.py createsuperuser'."
            )
            return
        User = get_user_model()
        username = settings.CANARY_ADMIN_USERNAME
        if User.objects.filter(username=username).exists():
            self.stdout.write(f"Local admin account '{username}' already exists.")
            return
        password = secrets.token_urlsafe(12)
        user = User.objects.create_superuser(username=username, email="", password=password)
        services.user_set_roles(user=user, roles=[Role.ADMIN])
        self.stdout.write(
            self.style.SUCCESS(
                f"Created local admin account '{username}' with password: {password}\n"
                "It is shown only this once; change it on first login."
            )
        )
