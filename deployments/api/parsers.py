"""A YAML request parser, so a pipeline can POST the configuration file it keeps in its repo."""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser

from deployments.config import ConfigError, load_text

MAX_YAML_BYTES = 1_000_000


class YAMLParser(BaseParser):
    """``application/yaml`` (and the older ``application/x-yaml`` and ``text/yaml``), read by
    the configuration's own strict loader: plain data only, duplicate keys refused."""

    media_type = "application/yaml"

    def parse(
        self,
        stream: IO[bytes],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        raw = stream.read(MAX_YAML_BYTES + 1)
        if len(raw) > MAX_YAML_BYTES:
            raise ParseError(f"The YAML body is larger than {MAX_YAML_BYTES:,} bytes.")
        try:
            return load_text(raw, "yaml")
        except ConfigError as error:
            raise ParseError(error.errors[0].message) from None
        except UnicodeDecodeError:
            raise ParseError("The YAML body is not UTF-8 text.") from None


class LegacyYAMLParser(YAMLParser):
    media_type = "application/x-yaml"


class TextYAMLParser(YAMLParser):
    media_type = "text/yaml"


YAML_PARSERS = [YAMLParser, LegacyYAMLParser, TextYAMLParser]
