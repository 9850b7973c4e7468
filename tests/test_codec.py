"""The codec on its own: values and senders across a process boundary, and bytes that lie.

Two ``Codec`` objects stand for two processes: what one encodes the other decodes,
each with its own registries.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import os
import random
import subprocess
import sys
import tracemalloc
import uuid
from collections.abc import Iterator
from typing import Any

import msgpack
import pydantic
import pytest
from pydantic.alias_generators import to_camel

from signalbus import DecodingError, EncodingError, MessageTooLargeError
from signalbus.codec import (
    MAX_EXT_DEPTH,
    MSGPACK_MAX_NESTING,
    Codec,
    Envelope,
    Ext,
)
from signalbus.wire import ENVELOPE_VERSION

TOKEN = bytes(range(1, 9))
CHANNEL = "tests.codec-signal"
SIZE = 1 << 20


# -- module-level types, so the receiving codec can find them by module:qualname ------------


@dataclasses.dataclass
class Point:
    x: int
    y: int
    tags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Stamp:
    at: datetime.datetime
    where: Point
    note: str = ""


class Profile(pydantic.BaseModel):
    name: str
    joined: datetime.datetime
    ids: tuple[int, ...] = ()
    amount: decimal.Decimal = decimal.Decimal("0")


class CamelProfile(pydantic.BaseModel):
    """Fields with aliases, as APIs that speak camelCase have them."""

    model_config = pydantic.ConfigDict(alias_generator=to_camel)

    user_id: int
    display_name: str = pydantic.Field(alias="shownAs")


class Money:
    """Neither a dataclass nor a model: travels only once registered."""

    def __init__(self, cents: int, currency: str) -> None:
        self.cents = cents
        self.currency = currency

    def __eq__(self, other: object) -> bool:
        return type(other) is Money and (other.cents, other.currency) == (self.cents, self.currency)

    def __hash__(self) -> int:
        return hash((self.cents, self.currency))


class Unsendable:
    """Nothing tells the codec how to send this."""


class App:
    """Stands for a Flask app: an object that is a sender but cannot cross processes."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __repr__(self) -> str:
        return f"<App {self.label}>"


TRAP_CALLS: list[tuple[Any, ...]] = []


class Trap:
    """A loaded class that is neither a dataclass nor a model: the wire must never call it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        TRAP_CALLS.append((args, kwargs))


@dataclasses.dataclass
class Ghost:
    x: int


class GhostModel(pydantic.BaseModel):
    x: int


# Classes whose module the receiving process never imported.
Ghost.__module__ = GhostModel.__module__ = "signalbus_tests_module_never_imported"


def register_money(codec: Codec, name: str | None = "money") -> None:
    codec.register_type(Money, lambda m: [m.cents, m.currency], lambda v: Money(*v), name=name)


# -- helpers -----------------------------------------------------------------------


def encode(
    codec: Codec,
    kwargs: dict[str, Any] | None = None,
    *,
    sender: Any = None,
    channel: str = CHANNEL,
    seq: int = 1,
) -> bytes:
    return codec.encode(
        token=TOKEN,
        seq=seq,
        channel=channel,
        sender=sender,
        kwargs={} if kwargs is None else kwargs,
        timestamp=1_700_000_000.25,
        origin="host:123",
    )


def wire(*fields: Any) -> bytes:
    """An envelope made by hand, field by field, as a forger would."""
    return msgpack.packb(list(fields))


def forged(
    *,
    version: Any = ENVELOPE_VERSION,
    sender: Any = None,
    kwargs: Any = dataclasses.MISSING,
    channel: Any = CHANNEL,
) -> bytes:
    if kwargs is dataclasses.MISSING:
        kwargs = {}
    return wire(version, TOKEN, 1, channel, sender, kwargs, 1.0, "h:1")


PLACEHOLDER = "\x00placeholder\x00"


def raw_ext(code: int, payload: bytes) -> bytes:
    """An ext8 value made by hand: ``msgpack.ExtType`` refuses the negative codes."""
    return bytes([0xC7, len(payload), code & 0xFF]) + payload


def spliced(data: bytes, raw: bytes) -> bytes:
    """``data`` (made with PLACEHOLDER somewhere) with ``raw`` bytes in its place."""
    packed = msgpack.packb(PLACEHOLDER)
    assert data.count(packed) == 1
    return data.replace(packed, raw)


def ext(code: int, value: Any) -> msgpack.ExtType:
    return msgpack.ExtType(code, msgpack.packb(value))


def nested_envelope(depth: int, leaf: bytes = b"\x90") -> bytes:
    """An envelope whose kwargs hold ``{"x": [[...leaf...]]}``, ``depth`` arrays deep."""
    head = b"\x98" + b"".join(msgpack.packb(f) for f in [ENVELOPE_VERSION, TOKEN, 1, CHANNEL, None])
    tail = msgpack.packb(1.0) + msgpack.packb("h:1")
    return head + b"\x81" + msgpack.packb("x") + b"\x91" * depth + leaf + tail


def assert_rejected(codec: Codec, data: bytes) -> DecodingError:
    with pytest.raises(DecodingError) as caught:
        codec.decode(data)
    assert type(caught.value) is DecodingError
    return caught.value


def same_types(left: Any, right: Any) -> bool:
    """Equal, and of the same types all the way down (1 == 1.0 == True is not enough)."""
    if type(left) is not type(right) or left != right:
        return False
    if isinstance(left, (list, tuple)):
        return all(same_types(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, dict):
        rights = {(type(key), key): value for key, value in right.items()}
        return all(
            (type(key), key) in rights and same_types(value, rights[type(key), key])
            for key, value in left.items()
        )
    if isinstance(left, (set, frozenset)):
        return sorted(map(repr, left)) == sorted(map(repr, right))
    return True


@pytest.fixture
def codec() -> Codec:
    return Codec(max_message_size=SIZE)


@pytest.fixture
def other() -> Codec:
    """The codec of another process."""
    return Codec(max_message_size=SIZE)


@pytest.fixture
def trap() -> Iterator[list[tuple[Any, ...]]]:
    TRAP_CALLS.clear()
    yield TRAP_CALLS
    TRAP_CALLS.clear()


# -- round trips -------------------------------------------------------------------

UTC_NOON = datetime.datetime(2026, 1, 2, 12, 30, 5, 123456, tzinfo=datetime.UTC)
PLUS_5H30 = datetime.timezone(datetime.timedelta(hours=5, minutes=30))

ROUND_TRIPS: dict[str, Any] = {
    "none": None,
    "true": True,
    "false": False,
    "int": 42,
    "negative-int": -(2**63),
    "big-int": 2**64 - 1,
    "float": 3.25,
    "negative-zero": -0.0,
    "str": "héllo ✓",
    "empty-str": "",
    "bytes": b"\x00\xffbin",
    "list": [1, "a", None, 2.5],
    "dict": {"a": 1, "b": [True, None]},
    "dict-int-keys": {1: "one", 2: "two", "three": 3},
    "tuple": (1, "a", None),
    "empty-tuple": (),
    "tuple-in-list": [(1, 2), [3, (4, (5,))]],
    "set": {1, "a", (2, 3)},
    "empty-set": set(),
    "frozenset": frozenset({1, 2, "x"}),
    "datetime-naive": datetime.datetime(2026, 1, 2, 3, 4, 5, 678901),
    "datetime-utc": UTC_NOON,
    "datetime-offset": datetime.datetime(2026, 6, 1, 8, 0, tzinfo=PLUS_5H30),
    "date": datetime.date(2026, 2, 28),
    "time": datetime.time(23, 59, 58, 999),
    "time-aware": datetime.time(7, 15, tzinfo=PLUS_5H30),
    "timedelta": datetime.timedelta(days=3, seconds=7, microseconds=11),
    "negative-timedelta": datetime.timedelta(days=-2, seconds=5),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "decimal": decimal.Decimal("1234.5600"),
    "dataclass": Point(1, 2, ("a", "b")),
    "nested-dataclass": Stamp(UTC_NOON, Point(3, 4), note="n"),
    "model": Profile(name="ada", joined=UTC_NOON, ids=(1, 2), amount=decimal.Decimal("9.99")),
    "dataclass-in-dict": {"points": [Point(0, 0), Point(5, 6)]},
    "model-with-aliases": CamelProfile(userId=7, shownAs="Ada"),
}


@pytest.mark.parametrize("value", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_value_arrives_as_same_type_and_equal(codec: Codec, other: Codec, value: Any) -> None:
    envelope = other.decode(encode(codec, {"value": value}))
    assert same_types(envelope.kwargs, {"value": value})


def test_details_that_equality_hides(codec: Codec) -> None:
    aware = datetime.datetime(2026, 6, 1, 8, 0, tzinfo=PLUS_5H30)
    value = {
        "aware": aware,
        "naive": datetime.datetime(2026, 6, 1, 8, 0),
        "decimal": decimal.Decimal("1.10"),
        "stamp": Stamp(UTC_NOON, Point(1, 2)),
        "model": Profile(name="x", joined=UTC_NOON, ids=(3,)),
    }
    kwargs = codec.decode(encode(codec, value)).kwargs
    assert kwargs["aware"].utcoffset() == datetime.timedelta(hours=5, minutes=30)
    assert kwargs["naive"].tzinfo is None
    assert str(kwargs["decimal"]) == "1.10"
    assert type(kwargs["stamp"].where) is Point
    assert type(kwargs["model"].ids) is tuple


@pytest.mark.parametrize("microseconds", [1, -1, 999_999])
def test_utc_offset_under_a_second_survives(codec: Codec, microseconds: int) -> None:
    """``fromisoformat`` reads such an offset as UTC; ``==`` on times does not notice."""
    offset = datetime.timedelta(microseconds=microseconds)
    zone = datetime.timezone(offset)
    value = {
        "at": datetime.datetime(2026, 1, 2, tzinfo=zone),
        "time": datetime.time(7, tzinfo=zone),
    }
    kwargs = codec.decode(encode(codec, value)).kwargs
    assert kwargs == value
    assert kwargs["at"].utcoffset() == kwargs["time"].utcoffset() == offset


def test_envelope_fields_survive(codec: Codec, other: Codec) -> None:
    data = encode(codec, {"n": 1}, sender="web", seq=77)
    envelope = other.decode(data)
    assert isinstance(envelope, Envelope)
    assert envelope.token == TOKEN
    assert envelope.seq == 77
    assert envelope.channel == CHANNEL
    assert envelope.sender == "web"
    assert envelope.kwargs == {"n": 1}
    assert envelope.timestamp == 1_700_000_000.25
    assert envelope.origin == "host:123"
    assert envelope.id == f"{TOKEN.hex()}-77"


def test_registered_type_is_revived_by_the_receiver_that_registered_it(
    codec: Codec, other: Codec
) -> None:
    register_money(codec)
    register_money(other)
    value = {"price": Money(1999, "EUR"), "prices": [Money(1, "USD"), (Money(2, "GBP"),)]}
    assert same_types(other.decode(encode(codec, value)).kwargs, value)


def test_registered_type_arrives_in_wire_form_where_not_registered(
    codec: Codec, other: Codec
) -> None:
    register_money(codec)
    assert other.decode(encode(codec, {"price": Money(5, "EUR")})).kwargs == {"price": [5, "EUR"]}


def test_registered_type_default_name_is_module_and_qualname(codec: Codec, other: Codec) -> None:
    register_money(codec, name=None)
    register_money(other, name=None)
    assert other.decode(encode(codec, {"price": Money(5, "EUR")})).kwargs["price"] == Money(
        5, "EUR"
    )


def test_class_whose_module_is_not_imported_arrives_as_plain_dict(
    codec: Codec, other: Codec
) -> None:
    kwargs = other.decode(encode(codec, {"d": Ghost(1), "m": GhostModel(x=2)})).kwargs
    assert kwargs == {"d": {"x": 1}, "m": {"x": 2}}
    assert type(kwargs["d"]) is dict and type(kwargs["m"]) is dict


# -- senders -----------------------------------------------------------------------


@pytest.mark.parametrize("sender", [None, "web", "", 0, 7, -(2**40)])
def test_plain_senders_travel_as_themselves(codec: Codec, other: Codec, sender: Any) -> None:
    decoded = other.decode(encode(codec, sender=sender)).sender
    assert decoded == sender and type(decoded) is type(sender)


def test_registered_sender_arrives_as_the_receivers_object(codec: Codec, other: Codec) -> None:
    here, there = App("here"), App("there")
    codec.register_sender(here, "app")
    other.register_sender(there, "app")
    assert other.decode(encode(codec, sender=here)).sender is there
    # The sending codec, decoding its own bytes, gets its own object back.
    assert codec.decode(encode(codec, sender=here)).sender is here


def test_registered_sender_arrives_as_its_name_where_nothing_is_registered(
    codec: Codec, other: Codec
) -> None:
    here = App("here")
    codec.register_sender(here, "app")
    sender = other.decode(encode(codec, sender=here)).sender
    assert sender == "app" and type(sender) is str


def test_plain_string_sender_never_collides_with_a_registered_name(
    codec: Codec, other: Codec
) -> None:
    other.register_sender(App("there"), "app")
    sender = other.decode(encode(codec, sender="app")).sender
    assert sender == "app" and type(sender) is str


@pytest.mark.parametrize(
    "sender",
    [object(), App("unregistered"), 1.5, b"bytes", ("a", 1), ["a"], Point(1, 2)],
    ids=["object", "app", "float", "bytes", "tuple", "list", "dataclass"],
)
def test_unregistered_sender_raises_encoding_error_saying_how(codec: Codec, sender: Any) -> None:
    with pytest.raises(EncodingError) as caught:
        encode(codec, sender=sender)
    message = str(caught.value)
    assert CHANNEL in message
    assert "register_sender" in message


# -- what cannot be encoded --------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [Unsendable(), [1, Unsendable()], {"k": (Unsendable(),)}],
    ids=["bare", "in-list", "deep"],
)
def test_unencodable_argument_is_named_with_channel_and_type(codec: Codec, value: Any) -> None:
    with pytest.raises(EncodingError) as caught:
        encode(codec, {"fine": 1, "culprit": value})
    message = str(caught.value)
    assert CHANNEL in message
    assert "'culprit'" in message
    assert "'fine'" not in message
    assert f"{__name__}.Unsendable" in message
    assert "register_type" in message


@pytest.mark.parametrize(
    "value", [2**64, -(2**63) - 1, "lone \ud800 surrogate"], ids=["too-big", "too-small", "utf8"]
)
def test_values_msgpack_refuses_raise_encoding_error(codec: Codec, value: Any) -> None:
    with pytest.raises(EncodingError) as caught:
        encode(codec, {"culprit": value})
    assert CHANNEL in str(caught.value) and "'culprit'" in str(caught.value)


def test_oversized_event_raises_at_encode(codec: Codec) -> None:
    small = Codec(max_message_size=200)
    encode(small, {"blob": b"x" * 50})
    with pytest.raises(MessageTooLargeError) as caught:
        encode(small, {"blob": b"x" * 300})
    assert isinstance(caught.value, EncodingError)
    assert CHANNEL in str(caught.value) and "max_message_size" in str(caught.value)


def test_oversized_message_is_a_decoding_error(codec: Codec) -> None:
    data = encode(codec, {"blob": b"x" * 300})
    assert codec.decode(data).kwargs == {"blob": b"x" * 300}
    assert_rejected(Codec(max_message_size=200), data)


# -- garbage on the wire -----------------------------------------------------------


@pytest.mark.parametrize("size", [1, 4, 8, 64, 1000, 100_000])
def test_random_bytes_are_a_decoding_error(codec: Codec, size: int) -> None:
    rng = random.Random(size)
    for _ in range(20):
        assert_rejected(codec, rng.randbytes(size))


def test_empty_message_is_a_decoding_error(codec: Codec) -> None:
    assert_rejected(codec, b"")


def test_every_truncation_of_a_valid_envelope_is_a_decoding_error(codec: Codec) -> None:
    data = encode(codec, {"when": UTC_NOON, "pair": (1, (2, {3})), "p": Point(1, 2)}, sender=4)
    codec.decode(data)
    for end in range(len(data)):
        assert_rejected(codec, data[:end])


@pytest.mark.parametrize("version", [0, 2, 127])
def test_wrong_version_is_a_decoding_error(codec: Codec, version: int) -> None:
    data = encode(codec, {"n": 1})
    assert_rejected(codec, data[:1] + bytes([version]) + data[2:])
    assert_rejected(codec, forged(version=version))


def test_hand_made_envelope_is_accepted(codec: Codec) -> None:
    """The forgeries below differ from this one in one field only."""
    envelope = codec.decode(forged(kwargs={"n": ext(Ext.TUPLE, [1])}))
    assert envelope.kwargs == {"n": (1,)}


@pytest.mark.parametrize("depth", [5_000, 500_000])
def test_deeply_nested_arrays_are_a_decoding_error(codec: Codec, depth: int) -> None:
    assert_rejected(codec, nested_envelope(depth))


@pytest.mark.parametrize("code", [Ext.TUPLE, Ext.SET, Ext.DATACLASS])
def test_deeply_nested_extension_values_are_a_decoding_error(codec: Codec, code: Ext) -> None:
    value: Any = 1
    for _ in range(200):
        if code == Ext.DATACLASS:
            value = ext(code, [f"{__name__}:Point", {"x": value, "y": 0}])
        else:
            value = ext(code, [value])
    assert_rejected(codec, forged(kwargs={"v": value}))


def test_moderately_nested_tuples_still_decode(codec: Codec) -> None:
    value: Any = 1
    for _ in range(10):
        value = (value,)
    assert codec.decode(encode(codec, {"v": value})).kwargs == {"v": value}


@pytest.mark.parametrize("code", [0, 14, 99, 127, -2, -128])
def test_unknown_extension_code_is_a_decoding_error(codec: Codec, code: int) -> None:
    assert_rejected(codec, spliced(forged(kwargs={"v": PLACEHOLDER}), raw_ext(code, b"abc")))
    assert_rejected(codec, spliced(forged(sender=PLACEHOLDER), raw_ext(code, b"abc")))


def test_msgpack_timestamp_extension_is_rejected_as_a_sender(codec: Codec) -> None:
    timestamp = raw_ext(-1, (1).to_bytes(4, "big"))
    assert_rejected(codec, spliced(forged(sender=PLACEHOLDER), timestamp))


def test_msgpack_timestamp_extension_is_a_decoding_error(codec: Codec) -> None:
    timestamp = raw_ext(-1, (1).to_bytes(4, "big"))
    assert_rejected(codec, spliced(forged(kwargs={"v": PLACEHOLDER}), timestamp))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"a": 1}),
        msgpack.packb("x"),
    ],
    ids=["empty", "invalid", "list", "map", "str"],
)
@pytest.mark.parametrize("code", list(Ext), ids=[code.name for code in Ext])
def test_malformed_extension_payloads_are_a_decoding_error(
    codec: Codec, code: Ext, payload: bytes
) -> None:
    data = forged(kwargs={"v": msgpack.ExtType(code, payload)})
    try:
        codec.decode(data)
    except DecodingError as exc:
        assert type(exc) is DecodingError
    # Some payloads are meaningful for some codes (a list is a fine tuple); the only
    # requirement is that nothing else escapes.


@pytest.mark.parametrize(
    "kwargs",
    [[1, 2], "kwargs", None, 5, {1: "int key"}, {b"bytes": 1}, ext(Ext.TUPLE, [1])],
    ids=["list", "str", "nil", "int", "int-key", "bytes-key", "tuple"],
)
def test_kwargs_that_are_not_a_dict_of_str_are_a_decoding_error(codec: Codec, kwargs: Any) -> None:
    assert_rejected(codec, forged(kwargs=kwargs))


@pytest.mark.parametrize(
    "fields",
    [
        [ENVELOPE_VERSION, TOKEN, 1, CHANNEL, None, {}, 1.0],
        [ENVELOPE_VERSION, TOKEN, 1, CHANNEL, None, {}, 1.0, "h:1", "1-0", "extra"],
        [ENVELOPE_VERSION, TOKEN, 1, CHANNEL, None, {}, 1.0, "h:1", 10],
        [ENVELOPE_VERSION, TOKEN, "1", CHANNEL, None, {}, 1.0, "h:1"],
        [ENVELOPE_VERSION, TOKEN, 1, b"channel", None, {}, 1.0, "h:1"],
        [ENVELOPE_VERSION, TOKEN, 1, CHANNEL, None, {}, "now", "h:1"],
        [ENVELOPE_VERSION, TOKEN, 1, CHANNEL, None, {}, 1.0, 123],
    ],
    ids=["short", "long", "stream-id", "seq", "channel", "timestamp", "origin"],
)
def test_malformed_envelope_fields_are_a_decoding_error(codec: Codec, fields: list[Any]) -> None:
    assert_rejected(codec, wire(*fields))


def test_envelope_that_is_a_map_is_a_decoding_error(codec: Codec) -> None:
    assert_rejected(codec, msgpack.packb({"version": ENVELOPE_VERSION}))


@pytest.mark.parametrize(
    "sender",
    [
        1.5,
        b"bytes",
        ["list"],
        {"a": 1},
        ext(Ext.TUPLE, ["a"]),
        ext(Ext.SET, [1]),
        ext(Ext.UUID, None),
        msgpack.ExtType(Ext.UUID, uuid.UUID(int=1).bytes),
        ext(Ext.DATACLASS, [f"{__name__}:Point", {"x": 1, "y": 2}]),
        ext(Ext.REGISTERED, ["money", [1, "EUR"]]),
    ],
    ids=["float", "bytes", "list", "map", "tuple", "set", "bad-uuid", "uuid", "dataclass", "reg"],
)
def test_forged_sender_of_a_disallowed_type_is_a_decoding_error(codec: Codec, sender: Any) -> None:
    register_money(codec)
    assert_rejected(codec, forged(sender=sender))


@pytest.mark.parametrize("code", [Ext.DATACLASS, Ext.MODEL])
@pytest.mark.parametrize(
    "key",
    [
        "os:system",
        "builtins:eval",
        "subprocess:Popen",
        "subprocess:run",
        f"{__name__}:Trap",
        f"{__name__}:Trap.__init__",
        f"{__name__}:Point.__init__",
        f"{__name__}:TRAP_CALLS.append",
        "posix:system",
        "os:path.join",
        ":",
        "",
        "no.such.module:Thing",
    ],
)
def test_class_name_from_the_wire_never_calls_what_it_names(
    codec: Codec,
    trap: list[tuple[Any, ...]],
    monkeypatch: pytest.MonkeyPatch,
    code: Ext,
    key: str,
) -> None:
    calls: list[tuple[Any, ...]] = []

    def spy(*args: Any, **kwargs: Any) -> None:
        calls.append(args)

    class SpyPopen:
        """A class, as Popen is: the codec may look it up, and must not call it."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            calls.append(args)

    for module in {os, sys.modules.get("posix", os)}:
        monkeypatch.setattr(module, "system", spy)
    monkeypatch.setattr(os, "popen", spy)
    monkeypatch.setattr(subprocess, "run", spy)
    monkeypatch.setattr(subprocess, "Popen", SpyPopen)
    fields = {"command": "echo pwned", "args": ["echo", "pwned"]}
    data = forged(kwargs={"v": ext(code, [key, fields])})
    try:
        value = codec.decode(data).kwargs["v"]
    except DecodingError as exc:
        assert type(exc) is DecodingError
    else:
        assert value == fields and type(value) is dict
    assert calls == []
    assert trap == []


@pytest.mark.parametrize("code", [Ext.DATACLASS, Ext.MODEL])
@pytest.mark.parametrize("key", [5, None, b"os:system", ["os", "system"]])
def test_class_name_that_is_not_a_str_is_a_decoding_error(
    codec: Codec, code: Ext, key: Any
) -> None:
    assert_rejected(codec, forged(kwargs={"v": ext(code, [key, {}])}))


def test_dataclass_fields_that_do_not_fit_are_a_decoding_error(codec: Codec) -> None:
    assert_rejected(codec, forged(kwargs={"v": ext(Ext.DATACLASS, [f"{__name__}:Point", {}])}))
    assert_rejected(codec, forged(kwargs={"v": ext(Ext.MODEL, [f"{__name__}:Profile", {}])}))
    assert_rejected(codec, forged(kwargs={"v": ext(Ext.DATACLASS, [f"{__name__}:Point", 3])}))


def test_failing_registered_decoder_is_a_decoding_error(codec: Codec) -> None:
    register_money(codec)
    assert_rejected(codec, forged(kwargs={"v": ext(Ext.REGISTERED, ["money", "not a pair"])}))


# -- limits ------------------------------------------------------------------------


def nested_lists(depth: int, leaf: Any = 1) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def packed(value: Any) -> bytes:
    """To compare values nested too deep for ``==`` (it recurses)."""
    return msgpack.packb(value)


def nested_tuples(depth: int, leaf: Any = 1) -> Any:
    for _ in range(depth):
        leaf = (leaf,)
    return leaf


# The envelope and its kwargs are two of the arrays and maps msgpack nests.
DEEPEST = MSGPACK_MAX_NESTING - 2


def test_msgpack_nesting_limit_is_the_same_for_encode_and_decode(codec: Codec) -> None:
    deepest = nested_lists(DEEPEST)
    assert packed(codec.decode(encode(codec, {"v": deepest})).kwargs["v"]) == packed(deepest)
    with pytest.raises(EncodingError, match="cannot be encoded: recursion limit exceeded"):
        encode(codec, {"v": [deepest]})
    # nested_envelope's innermost array is the leaf.
    decoded = codec.decode(nested_envelope(DEEPEST - 1)).kwargs["x"]
    assert packed(decoded) == packed(nested_lists(DEEPEST - 1, []))
    error = assert_rejected(codec, nested_envelope(DEEPEST))
    assert str(error) == f"arrays and maps nested more than {MSGPACK_MAX_NESTING} deep"


def test_deep_nesting_with_a_0xff_byte_decodes_without_recursion(codec: Codec) -> None:
    """-1 is a 0xff byte, which makes the codec search the value for msgpack timestamps."""
    deepest = nested_lists(DEEPEST, -1)
    assert packed(codec.decode(encode(codec, {"v": deepest})).kwargs["v"]) == packed(deepest)
    timestamp = raw_ext(-1, (1).to_bytes(4, "big"))
    error = assert_rejected(codec, nested_envelope(DEEPEST - 1, timestamp))
    assert str(error) == "msgpack timestamps are not part of the signalbus format"


@pytest.mark.parametrize(
    "value",
    [
        ext(Ext.REGISTERED, ["money", [msgpack.Timestamp(1, 0), "EUR"]]),
        ext(Ext.DATACLASS, [f"{__name__}:Point", {"x": msgpack.Timestamp(1, 0), "y": 0}]),
        ext(Ext.TUPLE, [{"k": [msgpack.Timestamp(1, 0)]}]),
    ],
    ids=["registered", "dataclass", "tuple"],
)
def test_msgpack_timestamp_inside_an_extension_value_is_a_decoding_error(
    codec: Codec, value: msgpack.ExtType
) -> None:
    register_money(codec)
    error = assert_rejected(codec, forged(kwargs={"v": value}))
    assert str(error) == "msgpack timestamps are not part of the signalbus format"


FOUR_GB = b"\xff\xff\xff\xff"


@pytest.mark.parametrize(
    ("header", "says"),
    [
        (b"\xdd" + FOUR_GB, "exceeds max_array_len"),
        (b"\xdf" + FOUR_GB, "exceeds max_map_len"),
        (b"\xdc\xff\xff", "exceeds max_array_len"),
        (b"\xdb" + FOUR_GB, "incomplete input"),
        (b"\xc6" + FOUR_GB, "incomplete input"),
        (b"\xc9" + FOUR_GB + bytes([Ext.TUPLE]), "exceeds max_ext_len"),
    ],
    ids=["array32", "map32", "array16", "str32", "bin32", "ext32"],
)
def test_length_header_longer_than_the_message_fails_before_allocating(
    codec: Codec, header: bytes, says: str
) -> None:
    data = spliced(forged(kwargs={"v": PLACEHOLDER}), header)
    tracemalloc.start()
    try:
        error = assert_rejected(codec, data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(error).startswith("undecodable message: ") and says in str(error)
    assert peak < 100_000


def test_extension_values_nest_as_deep_at_encode_as_at_decode(codec: Codec) -> None:
    deepest = {"v": nested_tuples(MAX_EXT_DEPTH), "d": nested_tuples(MAX_EXT_DEPTH - 1, UTC_NOON)}
    assert same_types(codec.decode(encode(codec, deepest)).kwargs, deepest)
    forged_deeper = ext(Ext.TUPLE, [1])
    for _ in range(MAX_EXT_DEPTH):
        forged_deeper = ext(Ext.TUPLE, [forged_deeper])
    error = assert_rejected(codec, forged(kwargs={"v": forged_deeper}))
    assert (
        str(error)
        == f"tuples, sets, dates and other extension values nested more than {MAX_EXT_DEPTH} deep"
    )


@pytest.mark.parametrize(
    "value",
    [
        nested_tuples(MAX_EXT_DEPTH + 1),
        nested_tuples(MAX_EXT_DEPTH, UTC_NOON),
        nested_tuples(5_000),
        Point(nested_tuples(MAX_EXT_DEPTH), 0),
    ],
    ids=["tuples", "datetime-in-tuples", "very-deep", "dataclass"],
)
def test_extension_values_nested_too_deep_raise_encoding_error(codec: Codec, value: Any) -> None:
    with pytest.raises(EncodingError) as caught:
        encode(codec, {"fine": 1, "culprit": value})
    message = str(caught.value)
    assert CHANNEL in message and "'culprit'" in message
    assert f"nested more than {MAX_EXT_DEPTH} deep" in message


def test_registered_type_that_encodes_as_itself_raises_encoding_error(codec: Codec) -> None:
    codec.register_type(Money, lambda m: m, lambda v: v)
    with pytest.raises(EncodingError, match=f"nested more than {MAX_EXT_DEPTH} deep"):
        encode(codec, {"price": Money(1, "EUR")})
