"""Schemas against a real server: arguments validated at send(), typed for receivers here
and elsewhere, and events from a sender with another version of the model; and the
check of a JSON Schema alone, as the CLI makes it."""

from __future__ import annotations

import datetime
import enum
from collections.abc import Callable
from typing import Any, Literal

import pydantic
import pytest

import signalbus
from signalbus import Bus, ConfigurationError, Group, Namespace, ValidationError
from signalbus.json_schema import JsonSchema

from .helpers import wait_for


class LoggedIn(pydantic.BaseModel):
    user_id: int
    at: datetime.datetime


class LoggedInV2(LoggedIn):
    plan: str = "free"  # added later, with a default


class LoggedInV3(LoggedIn):
    tenant: str  # added later, required


WHEN = datetime.datetime(2026, 11, 24, 10, 0, tzinfo=datetime.UTC)


def signal_on(bus: Bus, schema: type[pydantic.BaseModel] = LoggedIn) -> signalbus.Signal:
    return Namespace("auth", bus=bus).signal("logged-in", schema=schema)


def test_send_validates_first_and_delivers_nothing_on_failure(
    make_bus: Callable[..., Bus],
) -> None:
    sender_bus, receiver_bus = make_bus(), make_bus()
    remote: list[dict[str, Any]] = []
    signal_on(receiver_bus).connect(lambda sender, **kwargs: remote.append(kwargs), weak=False)
    signal = signal_on(sender_bus)
    local: list[dict[str, Any]] = []
    with signal.connected_to(lambda sender, **kwargs: local.append(kwargs)):
        with pytest.raises(ValidationError) as raised:
            signal.send("web", user_id="seven", at="not a time")
        message = str(raised.value)
        assert "auth.logged-in" in message and "LoggedIn" in message
        assert "user_id: Input should be a valid integer" in message
        assert "at: Input should be a valid datetime" in message
        assert isinstance(raised.value, ValueError)
        signal.send("web", user_id="7", at=WHEN.isoformat())  # coerced, as the model says
        wait_for(lambda: remote)
    assert local == remote == [{"user_id": 7, "at": WHEN}]
    assert type(remote[0]["user_id"]) is int and type(remote[0]["at"]) is datetime.datetime


def remote_only(into: list[dict[str, Any]]) -> Callable[..., None]:
    def receiver(sender: Any, **kwargs: Any) -> None:
        event = signalbus.current_event()
        if event is not None and event.remote:
            into.append(kwargs)

    return receiver


def test_a_newer_sender_and_an_older_receiver_understand_each_other(
    make_bus: Callable[..., Bus],
) -> None:
    old_bus, new_bus = make_bus(), make_bus()
    at_old: list[dict[str, Any]] = []
    at_new: list[dict[str, Any]] = []
    old, new = signal_on(old_bus, LoggedIn), signal_on(new_bus, LoggedInV2)
    old.connect(remote_only(at_old), weak=False)
    new.connect(remote_only(at_new), weak=False)
    new.send("web", user_id=1, at=WHEN, plan="pro")  # an unknown field for the old model
    old.send("web", user_id=2, at=WHEN)  # no plan: the new model fills in its default
    wait_for(lambda: at_old and at_new)
    assert at_old == [{"user_id": 1, "at": WHEN}]
    assert at_new == [{"user_id": 2, "at": WHEN, "plan": "free"}]


def test_an_event_that_does_not_fit_the_receivers_model_is_counted_not_delivered(
    make_bus: Callable[..., Bus], caplog: pytest.LogCaptureFixture
) -> None:
    sender_bus, receiver_bus = make_bus(), make_bus()
    got: list[dict[str, Any]] = []
    signal_on(receiver_bus, LoggedInV3).connect(lambda s, **kwargs: got.append(kwargs), weak=False)
    sender = signal_on(sender_bus, LoggedIn)
    sender.send("web", user_id=1, at=WHEN)  # no tenant: the receiver's model needs one
    wait_for(lambda: receiver_bus.stats()["invalid"] == 1)
    assert got == []
    assert "tenant: Field required" in caplog.text


def test_a_group_sends_an_event_that_does_not_fit_to_dead_letters_at_once(
    make_bus: Callable[..., Bus],
) -> None:
    bus = make_bus()
    handled: list[int] = []
    signal_on(bus, LoggedInV3).connect(
        lambda sender, **kwargs: handled.append(kwargs["user_id"]),
        weak=False,
        group=Group("mailer", max_attempts=5),
    )
    signal_on(make_bus(), LoggedIn).send("web", user_id=1, at=WHEN)
    wait_for(lambda: bus.stats()["dead_lettered"] == 1)
    (letter,) = signal_on(bus, LoggedInV3).dead_letters("mailer")
    assert (letter.attempts, handled) == (1, [])
    assert "tenant: Field required" in letter.error


def test_a_schema_must_be_a_pydantic_model() -> None:
    with pytest.raises(ConfigurationError, match="pydantic model"):
        Namespace("auth").signal("other", schema=dict)


# -- JsonSchema: the catalog's JSON Schema, checked without the model ------------------------


class Plan(enum.Enum):
    FREE = "free"
    PRO = "pro"


class Address(pydantic.BaseModel):
    city: str
    zip: str | None = None


class Tree(pydantic.BaseModel):
    name: str
    children: list[Tree] = []


class Signup(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    user_id: int
    ratio: float = 0.5
    beta: bool = False
    plan: Plan = Plan.FREE
    channel: Literal["web", "api"] = "web"
    version: Literal[2] = 2
    at: datetime.datetime | None = None
    address: Address | None = None
    tags: list[str] = []
    scores: dict[str, int] = {}
    pair: tuple[int, str] = (0, "")
    tree: Tree | None = None
    anything: Any = None
    count: int = pydantic.Field(default=0, ge=0)


SIGNUP = JsonSchema(Signup.model_json_schema())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"user_id": 7},
        {"user_id": 7.0, "ratio": 1, "beta": True, "plan": "pro", "channel": "api"},
        {"user_id": 7, "version": 2, "at": "2026-11-24T10:00:00Z", "address": None},
        {"user_id": 7, "address": {"city": "Lyon"}, "tags": ["a"], "scores": {"x": 1}},
        {"user_id": 7, "pair": [1, "a"], "tree": {"name": "a", "children": [{"name": "b"}]}},
        {"user_id": 7, "anything": {"what": ["ever", None]}},
    ],
)
def test_json_schema_lets_through_what_the_model_takes(kwargs: dict[str, Any]) -> None:
    assert SIGNUP.problems(kwargs) == []
    Signup.model_validate(kwargs)  # and so do receivers


@pytest.mark.parametrize(
    ("kwargs", "problems"),
    [
        ({}, ["'user_id' is a required property"]),
        ({"user_id": "seven"}, ["user_id: 'seven' is not of type 'integer'"]),
        (
            {"user_id": 7.5, "ratio": "half"},
            ["user_id: 7.5 is not of type 'integer'", "ratio: 'half' is not of type 'number'"],
        ),
        ({"user_id": 7, "beta": "maybe"}, ["beta: 'maybe' is not of type 'boolean'"]),
        ({"user_id": 7, "plan": "gold"}, ["plan: 'gold' is not one of ['free', 'pro']"]),
        ({"user_id": 7, "channel": "sms"}, ["channel: 'sms' is not one of ['web', 'api']"]),
        ({"user_id": 7, "version": 1}, ["version: 2 was expected"]),
        ({"user_id": 7, "at": [2026]}, ["at: [2026] is not of type 'string' or 'null'"]),
        (
            {"user_id": 7, "address": {"zip": 1}},
            ["address.zip: 1 is not of type 'string' or 'null'"],
        ),
        ({"user_id": 7, "address": "Lyon"}, ["address: 'Lyon' is not of type 'object' or 'null'"]),
        ({"user_id": 7, "tags": ["a", 1]}, ["tags.1: 1 is not of type 'string'"]),
        ({"user_id": 7, "count": -1}, ["count: -1 is less than the minimum of 0"]),
        ({"user_id": 7, "scores": {"x": "high"}}, ["scores.x: 'high' is not of type 'integer'"]),
        ({"user_id": 7, "pair": ["a", "b"]}, ["pair.0: 'a' is not of type 'integer'"]),
        (
            {"user_id": 7, "tree": {"name": "a", "children": [{}]}},
            ["tree.children.0: 'name' is a required property"],
        ),
        (
            {"user_id": 7, "nickname": "al"},
            ["Additional properties are not allowed ('nickname' was unexpected)"],
        ),
    ],
)
def test_json_schema_refuses_what_the_model_refuses_naming_each_field(
    kwargs: dict[str, Any], problems: list[str]
) -> None:
    assert SIGNUP.problems(kwargs) == problems
    with pytest.raises(pydantic.ValidationError):
        Signup.model_validate(kwargs)  # receivers would drop it


def test_json_schema_checks_nothing_it_cannot_read() -> None:
    for document in (None, [], {"type": "weird"}, {"$ref": "other.json#/Thing"}):
        assert JsonSchema(document).problems({"any": "thing"}) == []
    assert JsonSchema(None).fits_field("any", 1)
    assert SIGNUP.fits_field("not-a-field", 1)  # a field it does not name: any value
    assert not SIGNUP.fits_field("user_id", "7")
