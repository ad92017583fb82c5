"""Reading a saved cursor: each connector's typed cursor takes the JSON the pipeline stored and checks every
field through a ``CursorReader``, so a malformed one fails naming the source and the field."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Protocol, Self, TypeVar

from connectors.errors import CursorError


class CursorReader:
    """The fields of one saved JSON object; ``where`` prefixes field names (``Account.since``)."""

    def __init__(self, source: str, saved: Any, where: str = "") -> None:
        self.source = source
        self.where = where
        if not isinstance(saved, Mapping):
            raise CursorError(source, where or "cursor", f"expected an object, found {type(saved).__name__}")
        self.saved: Mapping[str, Any] = saved

    def fail(self, name: str, problem: str) -> CursorError:
        return CursorError(self.source, f"{self.where}.{name}" if self.where else name, problem)

    def _typed(self, name: str, kind: type | tuple[type, ...], label: str) -> Any:
        value = self.saved.get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise self.fail(name, f"expected {label}, found {value!r:.80}")
        return value

    def text(self, name: str) -> str | None:
        value: str | None = self._typed(name, str, "a string")
        return value or None

    def integer(self, name: str) -> int | None:
        """An integer, also as the digit string JSON round trips sometimes leave."""
        value = self.saved.get(name)
        if isinstance(value, str) and value.isdigit():
            return int(value)
        result: int | None = self._typed(name, int, "an integer")
        return result

    def mapping(self, name: str) -> dict[str, Any]:
        value: Mapping[str, Any] | None = self._typed(name, Mapping, "an object")
        return dict(value or {})

    def choice(self, name: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.saved.get(name, default)
        if value not in allowed:
            raise self.fail(name, f"{value!r:.80} is not one of {', '.join(allowed)}")
        return str(value)

    def nested(self, name: str) -> CursorReader:
        return CursorReader(self.source, self.saved[name], f"{self.where}.{name}" if self.where else name)


class Position(Protocol):
    """One object's position within a per-object cursor."""

    def to_json(self) -> dict[str, Any]: ...


P = TypeVar("P", bound=Position)


@dataclass(frozen=True)
class ObjectCursor(Generic[P]):
    """A cursor kept per object of the source (CRM objects, sObjects): each object's position by name.
    Objects no longer configured keep theirs, so configuring them again resumes where they stood."""

    objects: Mapping[str, P] = field(default_factory=dict)

    @staticmethod
    def read_objects(source: str, saved: Mapping[str, Any] | None, read: Callable[[CursorReader], P]) -> dict[str, P]:
        fields = CursorReader(source, saved or {})
        return {name: read(fields.nested(name)) for name in fields.saved}

    def to_json(self) -> dict[str, Any]:
        return {name: position.to_json() for name, position in self.objects.items()}

    def moved(self, name: str, position: P) -> Self:
        return replace(self, objects={**self.objects, name: position})
