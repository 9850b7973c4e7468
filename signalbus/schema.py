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
(``signalbus send``), checks arguments with :mod:`signalbus.json_schema`.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigurationError, ValidationError

__all__ = ["check_schema", "validated"]


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
