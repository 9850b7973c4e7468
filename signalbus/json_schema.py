"""A signal's arguments checked against the JSON Schema the catalog holds for it.

``signalbus send`` has no model, only what a bus recorded in the catalog (see
:mod:`signalbus.catalog`): checking the values against it refuses what every receiver
would drop, before anything is sent. Imported only by the CLI: ``jsonschema`` costs an
application nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jsonschema
import referencing.exceptions

__all__ = ["JsonSchema"]


class JsonSchema:
    """A JSON Schema, as the catalog records a model's, checked without the model.

    The ``jsonschema`` library checks it (draft 2020-12, as pydantic writes it): types,
    required fields, enums, bounds, nested models. Formats are not checked (a date-time
    is a string here), and types are JSON's, stricter than pydantic's lax mode: an
    integer is ``7`` (or ``7.0``), not ``"7"`` nor ``true``. A document that is not a
    schema, or refers outside itself, checks nothing.
    """

    def __init__(self, document: Any) -> None:
        if not isinstance(document, Mapping) or not _is_schema(document):
            document = {}
        self._validator = jsonschema.Draft202012Validator(document)
        self._document: Mapping[str, Any] = document

    def problems(self, kwargs: Mapping[str, Any]) -> list[str]:
        """What keeps ``kwargs`` from fitting, one line each naming the field; none if
        it fits."""
        try:
            errors = list(self._validator.iter_errors(dict(kwargs)))
        except referencing.exceptions.Unresolvable:  # a $ref outside the document
            return []
        return [_described(jsonschema.exceptions.best_match([error])) for error in errors]

    def fits_field(self, name: str, value: Any) -> bool:
        """Whether ``value`` fits field ``name`` (any value fits a field not named)."""
        field = self._document.get("properties", {}).get(name)
        if field is None:
            return True
        try:  # the field's schema, its references read in the whole document
            return bool(self._validator.evolve(schema=field).is_valid(value))
        except referencing.exceptions.Unresolvable:  # a $ref outside the document
            return True


def _is_schema(document: Mapping[str, Any]) -> bool:
    try:
        jsonschema.Draft202012Validator.check_schema(document)
    except jsonschema.SchemaError:
        return False
    return True


def _described(error: jsonschema.ValidationError) -> str:
    """``field.path: what is wrong``, or what is wrong with the arguments as a whole."""
    path = ".".join(str(part) for part in error.absolute_path)
    message = _types_expected(error) or error.message
    return f"{path}: {message}" if path else message


def _types_expected(error: jsonschema.ValidationError) -> str | None:
    """For a value fitting none of several types (an ``Optional[str]``), those types:
    jsonschema's own message says only that it fits none of the schemas."""
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        return None
    if any(alternative.validator != "type" for alternative in error.context):
        return None
    types = " or ".join(repr(alternative.validator_value) for alternative in error.context)
    return f"{error.instance!r} is not of type {types}"
