"""Reading untrusted JSON-like data into typed values, naming every field by its path.

Definitions arrive as plain dicts and lists: a routing rule, a flag, a health policy, a
deployment configuration, from an API body, a form, a YAML file or a JSON column. Their readers
name the field at fault one way, from the top of the document: keys joined by dots, list
positions in brackets (``rules[0].conditions[1].values[0]``, ``phases[2].durationMs``); the top
itself is the empty path. They agree on what each JSON kind is, too: a list is a JSON array (or
a tuple from Python code), and a boolean is never a number.

Pure: no Django import, so the engines use it. It runs when a definition is compiled or saved,
never per request.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, NoReturn

ErrorType = Callable[[str, str], Exception]
"""How a reader reports a problem: ``error(field, message)``, e.g. an exception class."""


def key_path(path: str, key: str) -> str:
    """The path of ``key`` in the object at ``path``: ``rules[0]`` and ``name`` read
    ``rules[0].name``; at the top, just ``name``."""
    return f"{path}.{key}" if path else key


def index_path(path: str, index: int) -> str:
    """The path of item ``index`` of the list at ``path``: ``rules[0]``."""
    return f"{path}[{index}]"


def nested_path(prefix: str, path: str) -> str:
    """A path found inside the value at ``prefix``, read from the top: ``rules[0]`` and
    ``serve.variant`` read ``rules[0].serve.variant``, ``targets`` and ``[1]`` read
    ``targets[1]``; an empty side leaves the other."""
    if not prefix:
        return path
    if not path:
        return prefix
    return f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"


def is_object(value: Any) -> bool:
    return isinstance(value, Mapping)


def is_list(value: Any) -> bool:
    return isinstance(value, list | tuple)


def is_integer(value: Any) -> bool:
    """A whole number: ``true`` is a boolean, not 1."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An integer or a float (not necessarily finite); never a boolean."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def kind_of(value: Any) -> str:
    """The JSON kind of ``value`` in words, for "must be an object, got a list"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


_MISSING: Any = object()


class Fields:
    """One object of untrusted data at ``path``, read key by key: every problem is raised as
    ``error(field, message)`` with the field's full path.

    ``top`` names the object in an error about the object itself when it is the whole document
    (its path is empty), such as ``policy: must be an object``.
    """

    __slots__ = ("data", "error", "path")

    def __init__(self, data: Any, path: str, error: ErrorType, *, top: str = "") -> None:
        if not isinstance(data, Mapping):
            raise error(path or top, "must be an object")
        self.data: Mapping[str, Any] = data
        self.path = path
        self.error = error

    def field(self, key: str) -> str:
        """The full path of ``key``."""
        return key_path(self.path, key)

    def fail(self, key: str, message: str) -> NoReturn:
        """Raise the reader's error for ``key``."""
        raise self.error(self.field(key), message)

    def unknown(self, allowed: Collection[str]) -> str | None:
        """The first key that is not in ``allowed``, as text, or None."""
        for key in self.data:
            if key not in allowed:
                return str(key)
        return None

    def value(self, key: str, default: Any = _MISSING) -> Any:
        """``data[key]``; absent or null is ``default``, or "is required" without one."""
        value = self.data.get(key)
        if value is None:
            if default is _MISSING:
                self.fail(key, "is required")
            return default
        return value

    def items(self, key: str) -> list[tuple[str, Any]]:
        """The list under ``key`` (none when absent or null), each item with its path."""
        value = self.data.get(key)
        if value is None:
            return []
        if not is_list(value):
            self.fail(key, "must be a list")
        base = self.field(key)
        return [(index_path(base, index), item) for index, item in enumerate(value)]

    def object(self, key: str, cls: type[Fields] | None = None) -> Fields:
        """The object under ``key``, read the same way (absent or null reads as empty)."""
        value = self.data.get(key)
        return (cls or type(self))({} if value is None else value, self.field(key), self.error)

    def objects(self, key: str, cls: type[Fields] | None = None) -> list[Fields]:
        """Each object of the list under ``key``."""
        make = cls or type(self)
        return [make(item, path, self.error) for path, item in self.items(key)]


def unstorable(text: str) -> str | None:
    """Why PostgreSQL cannot store ``text`` (a NUL, or half of a surrogate pair), or None."""
    if "\x00" in text:
        return "must not contain NUL characters"
    if any("\ud800" <= char <= "\udfff" for char in text):
        return "must not contain unpaired surrogates"
    return None


class Section(Fields):
    """`Fields` with the typed reads the definitions' readers share (a rollback plan, a kill
    switch): each value checked and named by its full path when it is wrong."""

    __slots__ = ()

    def only(self, *keys: str) -> None:
        """Refuse a key that is not one of ``keys``."""
        unknown = self.unknown(keys)
        if unknown is not None:
            self.fail(unknown, f"unknown field; expected one of {', '.join(keys)}")

    def text(self, key: str, default: str | None = None, *, limit: int = 200) -> str:
        """A string, stripped; without ``default`` it is required and must not be empty."""
        value = self.value(key) if default is None else self.data.get(key, default)
        if value is None:
            value = default or ""
        if not isinstance(value, str):
            self.fail(key, "must be a string")
        value = value.strip()
        if default is None and not value:
            self.fail(key, "must not be empty")
        if (problem := unstorable(value)) is not None:
            self.fail(key, problem)
        if len(value) > limit:
            self.fail(key, f"must be at most {limit} characters")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(key, "must be true or false")
        return value

    def integer(self, key: str, default: int, *, minimum: int = 0, maximum: int) -> int:
        value = self.data.get(key, default)
        if value is None:
            return default
        if not is_integer(value):
            self.fail(key, "must be a whole number")
        if not minimum <= value <= maximum:
            self.fail(key, f"must be between {minimum} and {maximum}")
        return int(value)

    def choice(
        self,
        key: str,
        words: type[Any],
        default: str | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> Any:
        """One of the StrEnum ``words`` (``-`` read as ``_``, and ``aliases`` for other
        spellings); without ``default`` it is required."""
        value = self.value(key) if default is None else self.data.get(key, default)
        if value is None:
            value = default
        if isinstance(value, str):
            value = (aliases or {}).get(value, value.replace("-", "_"))
        try:
            return words(value)
        except ValueError:
            self.fail(key, f"must be one of {', '.join(member.value for member in words)}")

    def words(self, key: str, *, limit: int = 50) -> tuple[str, ...]:
        """A list of non-empty strings, stripped, each once, in order."""
        found = []
        for path, item in self.items(key):
            if not isinstance(item, str) or not item.strip():
                raise self.error(path, "must be a non-empty string")
            if (problem := unstorable(item)) is not None:
                raise self.error(path, problem)
            found.append(item.strip())
        if len(found) > limit:
            self.fail(key, f"must have at most {limit} items")
        return tuple(dict.fromkeys(found))
