"""What the admins of rollback plans and kill switches share: an object edited as its definition
(the guide's vocabulary), checked and saved by the object's services, with the rest of its
fields read from that definition and shown read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.db import models
from django.http import HttpRequest, HttpResponseRedirect

from canary_site.admin import ServiceValidatedForm
from canary_site.choices import Source
from canary_site.exceptions import CanaryError, ValidationFailed


class DefinitionAdminForm(ServiceValidatedForm):
    """The definition, checked by the services' ``validate``; the path of a problem is in its
    message, as the definition is the only field."""

    noun = "object"

    def spec_of(self, definition: Any) -> Any:
        """The definition read by its service (raising its ``CanaryError``)."""
        raise NotImplementedError

    def check_spec(self, spec: Any) -> None:
        """What the service's reader does not check; nothing by default."""

    def validate(self, candidate: models.Model, data: dict[str, Any]) -> None:
        try:
            spec = self.spec_of(data.get("definition"))
        except CanaryError as error:
            raise ValidationFailed(error.message, field="definition") from None
        self.check_spec(spec)
        model = type(candidate)
        taken = model._default_manager.filter(name=spec.name).exclude(pk=self.instance.pk)
        if taken.exists():
            raise ValidationFailed(
                f"name: a {self.noun} named {spec.name!r} exists already.", field="definition"
            )


class DefinitionEditedAdminMixin:
    """Only the definition is editable; saved and deleted through the services, whose
    refusals are messages on the page, never a server error."""

    # Each is called with ``actor`` and ``source`` too, as the services are.
    def create_through_service(self, *, definition: Any, **by: Any) -> models.Model:
        raise NotImplementedError

    def update_through_service(
        self, *, obj: models.Model, definition: Any, **by: Any
    ) -> models.Model:
        raise NotImplementedError

    def delete_through_service(self, *, obj: models.Model, **by: Any) -> None:
        raise NotImplementedError

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["definition", *self.readonly_fields] if obj is not None else ["definition"]

    def _changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        # What the definition names (a service, a deployment, flags) is checked again when it
        # is saved, as one may have gone since the form was read.
        try:
            return super()._changeform_view(request, *args, **kwargs)
        except CanaryError as error:
            self.message_user(request, error.message, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        definition = form.cleaned_data["definition"]
        by = {"actor": request.user, "source": Source.UI}
        if change:
            stored = type(obj)._default_manager.get(pk=obj.pk)
            saved = self.update_through_service(obj=stored, definition=definition, **by)
        else:
            saved = self.create_through_service(definition=definition, **by)
        obj.pk = saved.pk
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        try:
            self.delete_through_service(obj=obj, actor=request.user, source=Source.UI)
        except CanaryError as error:
            self.message_user(request, f"{obj.name}: {error.message}", messages.ERROR)
