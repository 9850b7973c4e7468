"""Schemas: a signal's arguments checked, and typed, by a pydantic model.

``ns.signal("logged-in", schema=LoggedIn)``: ``send()`` validates the arguments first
and raises :class:`~signalbus.ValidationError` (nothing delivered anywhere) if they do
not fit; receivers, here and in other processes, get the validated values as keyword
arguments, typed as the model says. The receiving process validates again with its own
version of the model: an event that does not fit is logged, counted and not delivered
(in a group, it goes to dead letters).

Schemas evolve as pydantic models do: a field added with a default is filled in for
events from older senders; fields a receiver's model does not know are ignored (the
pydantic default, ``extra="ignore"``; a model with ``extra="forbid"`` refuses them).

pydantic is imported only where a schema is used: the caller's model brought it in.

A process that has no model, only the JSON Schema the catalog recorded for it
(``signalbus send``), checks arguments with :class:`JsonSchema`, which knows the part of
JSON Schema that says what type each field is: enough to refuse what every receiver
would refuse as the wrong type, a missing field or a value outside an enum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from .errors import ConfigurationError, ValidationError

__all__ = ["JsonSchema", "check_schema", "validated"]


def check_schema(schema: Any, channel: str) -> None:
    """Refuse anything but a pydantic model class, when the signal is made."""
    if not (isinstance(schema, type) and hasattr(schema, "model_validate")):
        raise ConfigurationError(
            f"signal {channel!r}: schema must be a pydantic model class, not {schema!r}"
        )


def validated(schema: Any, channel: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` validated by ``schema``, as the model's typed fields."""
    import pydantic

    try:
        model = schema.model_validate(kwargs)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or '(event)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ValidationError(
            f"signal {channel!r}: the arguments do not fit {schema.__name__}: {problems}"
        ) from None
    return dict(vars(model))  # a model keeps its fields' values there, and only those


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    """An integer to JSON Schema: a number without a fraction (``7.0`` is one too)."""
    return _is_number(value) and (isinstance(value, int) or value.is_integer())


_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "integer": ("an integer", _is_integer),
    "number": ("a number", _is_number),
    "string": ("a string", lambda value: isinstance(value, str)),
    "boolean": ("true or false", lambda value: isinstance(value, bool)),
    "null": ("null", lambda value: value is None),
    "array": ("an array", lambda value: isinstance(value, list | tuple)),
    "object": ("an object", lambda value: isinstance(value, dict)),
}
"""Each JSON type: what to call it, and whether a value (as ``json.loads`` reads it) is one."""


def _types(schema: Mapping[str, Any]) -> list[tuple[str, Callable[[Any], bool]]]:
    """The JSON types ``schema`` allows, as :data:`_TYPES` has them; none for any type
    (it names none, or one this check does not know)."""
    names = schema.get("type", ())
    names = [names] if isinstance(names, str) else names
    return [_TYPES[name] for name in names] if all(name in _TYPES for name in names) else []


def _nouns(types: list[tuple[str, Callable[[Any], bool]]]) -> str:
    return " or ".join(noun for noun, _ in types)


def _at(path: str, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


class JsonSchema:
    """A JSON Schema, as pydantic writes a model's, checked without the model.

    Checks a subset of JSON Schema, the part that says what each field is: ``type``,
    ``enum``, ``const``, ``required``, ``properties``, ``additionalProperties``,
    ``items``, ``prefixItems``, ``anyOf``, ``oneOf`` (taken as anyOf), ``allOf`` and
    ``$ref`` within the document. Formats (a date-time is a string here), bounds,
    lengths and patterns are not checked: the receivers' models check them. Types are
    JSON's, stricter than pydantic's lax mode: an integer is ``7`` (or ``7.0``), not
    ``"7"`` nor ``true``; a boolean ``true``, not ``"yes"``. Anything this subset does
    not know (a keyword, a type, a ``$ref`` outside the document) refuses nothing.
    """

    def __init__(self, document: Any) -> None:
        self.document: Mapping[str, Any] = document if isinstance(document, Mapping) else {}

    def problems(self, kwargs: Mapping[str, Any]) -> list[str]:
        """What keeps ``kwargs`` from fitting, one line each naming the field; none if
        it fits."""
        return list(self._check(self.document, dict(kwargs), ""))

    def fits_field(self, name: str, value: Any) -> bool:
        """Whether ``value`` fits field ``name`` (any value fits a field not named)."""
        field = self.document.get("properties", {}).get(name)
        return not any(self._check(field, value, name))

    def _check(self, schema: Any, value: Any, path: str) -> Iterator[str]:
        if not isinstance(schema, Mapping):  # true, or a schema we cannot read
            return
        if "$ref" in schema:
            yield from self._check(self._resolve(schema["$ref"]), value, path)
        for part in schema.get("allOf", ()):
            yield from self._check(part, value, path)
        yield from self._any_of(schema.get("anyOf") or schema.get("oneOf") or (), value, path)
        wrong_type = self._wrong_type(schema, value)
        if wrong_type:
            yield f"{path}: {value!r} is not {wrong_type}"
            return  # what else is wrong with a value of the wrong type says nothing more
        if "enum" in schema and value not in schema["enum"]:
            options = ", ".join(map(repr, schema["enum"]))
            yield f"{path}: {value!r} is not one of {options}"
        if "const" in schema and value != schema["const"]:
            yield f"{path}: {value!r} is not {schema['const']!r}"
        if isinstance(value, dict):
            yield from self._object(schema, value, path)
        if isinstance(value, list | tuple):
            yield from self._array(schema, value, path)

    @staticmethod
    def _wrong_type(schema: Mapping[str, Any], value: Any) -> str:
        """The types ``schema`` asks for, if ``value`` is none of them; else ''."""
        types = _types(schema)
        return "" if not types or any(fits(value) for _, fits in types) else _nouns(types)

    def _any_of(self, alternatives: Sequence[Any], value: Any, path: str) -> Iterator[str]:
        """Nothing if ``value`` fits one of ``alternatives``; else the problems of the one
        alternative of its type (Optional[Model]: the model's), or that it fits none."""
        if not alternatives or any(not any(self._check(a, value, path)) for a in alternatives):
            return
        of_its_type = [a for a in alternatives if not self._wrong_type(self._target(a), value)]
        if len(of_its_type) == 1:
            yield from self._check(of_its_type[0], value, path)
        else:
            described = " or ".join(self._describe(a) for a in alternatives)
            yield f"{path}: {value!r} is not {described}"

    def _describe(self, schema: Any) -> str:
        """An alternative in a few words: a model's name, its values, or its types."""
        schema = self._target(schema)
        if "enum" in schema:
            return "one of " + ", ".join(map(repr, schema["enum"]))
        if "const" in schema:
            return repr(schema["const"])
        if schema.get("type") == "object" and "title" in schema:
            return str(schema["title"])
        return _nouns(_types(schema)) or "what its schema says"

    def _object(self, schema: Mapping[str, Any], value: dict[str, Any], path: str) -> Iterator[str]:
        properties = schema.get("properties", {})
        others = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                yield from self._check(properties[name], item, _at(path, name))
            elif others is False:
                title = schema.get("title", "the object")
                yield f"{_at(path, name)}: not a field of {title}, which takes no others"
            else:
                yield from self._check(others, item, _at(path, name))
        for name in schema.get("required", ()):
            if name not in value:
                yield f"{_at(path, name)}: missing (required)"

    def _array(
        self, schema: Mapping[str, Any], value: list[Any] | tuple[Any, ...], path: str
    ) -> Iterator[str]:
        first = schema.get("prefixItems", [])
        for index, item in enumerate(value):
            each = first[index] if index < len(first) else schema.get("items")
            yield from self._check(each, item, _at(path, index))

    def _target(self, schema: Any) -> Mapping[str, Any]:
        """``schema``, or what its ``$ref`` points at; {} for what cannot be read."""
        if isinstance(schema, Mapping) and "$ref" in schema:
            schema = self._resolve(schema["$ref"])
        return schema if isinstance(schema, Mapping) else {}

    def _resolve(self, ref: Any) -> Any:
        """The part of the document ``ref`` (a JSON Pointer in it: ``#/$defs/Plan``)
        points at; None for a reference elsewhere."""
        if not isinstance(ref, str) or not ref.startswith("#"):
            return None
        found: Any = self.document
        for part in ref[1:].split("/")[1:]:
            key = part.replace("~1", "/").replace("~0", "~")
            found = found.get(key) if isinstance(found, Mapping) else None
        return found
