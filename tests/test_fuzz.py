"""Hypothesis properties of the codec: every supported value arrives as an equal value of
the same type, and no bytes make ``decode`` raise anything but :class:`DecodingError`.

Each property tries ``$SIGNALBUS_FUZZ_EXAMPLES`` examples: 200 in the normal run, many
more with ``make fuzz``. As in test_codec, two ``Codec`` objects stand for two processes.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import os
import re
import struct
import sys
import uuid
from typing import Any

import msgpack
import pydantic
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from signalbus import DecodingError
from signalbus.codec import Codec, Envelope, Ext
from signalbus.signing import Signer
from signalbus.wire import ENVELOPE_HEAD, ENVELOPE_TAIL, ENVELOPE_VERSION, SIGNATURE_HEAD

FUZZ_EXAMPLES = int(os.environ.get("SIGNALBUS_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)

TOKEN = bytes(range(1, 9))
CHANNEL = "tests.fuzz-signal"
SIZE = 1 << 20
SIGNING_KEYS = ["2026-10: the old key", "2026-11: the new key"]


# -- module-level types, so the receiving codec can find them by module:qualname ------------


@dataclasses.dataclass
class Box:
    value: Any
    label: str = ""


@dataclasses.dataclass(frozen=True)
class FrozenBox:
    value: Any


class Inner(pydantic.BaseModel):
    when: datetime.datetime
    amount: decimal.Decimal


class Model(pydantic.BaseModel):
    name: str
    count: int
    ratio: float
    blob: bytes
    day: datetime.date
    at: datetime.time
    span: datetime.timedelta
    id: uuid.UUID
    ids: tuple[int, ...]
    tags: frozenset[str]
    scores: dict[str, float]
    inner: Inner | None


class Wrapped:
    """Neither a dataclass nor a model: travels as a registered type."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return type(other) is Wrapped and other.value == self.value


class App:
    """A sender that cannot cross processes unless registered (a Flask app, say)."""


APP = App()

TRAPPED: list[Any] = []


class Trap:
    """A loaded class that is neither a dataclass nor a model: the wire must never call it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        TRAPPED.append((args, kwargs))


NEVER_IMPORTED = "signalbus_fuzz_module_never_imported"


def process_codec(*, signer: Signer | None = None) -> Codec:
    """A codec as each process of an application sets it up."""
    codec = Codec(max_message_size=SIZE, signer=signer)
    codec.register_type(Wrapped, lambda w: w.value, Wrapped, name="wrapped")
    codec.register_sender(APP, "app")
    return codec


def encode(codec: Codec, kwargs: dict[str, Any], sender: Any = None) -> bytes:
    return codec.encode(
        token=TOKEN,
        seq=1,
        channel=CHANNEL,
        sender=sender,
        kwargs=kwargs,
        timestamp=1_700_000_000.25,
        origin="host:1",
    )


def same(left: Any, right: Any) -> bool:
    """Equal and of the same type all the way down, and alike where ``==`` is lenient:
    floats bit for bit (-0.0, NaN), a Decimal's exponent, a date and time's UTC offset."""
    if type(left) is not type(right):
        return False
    if isinstance(left, float):
        return struct.pack("<d", left) == struct.pack("<d", right)
    if isinstance(left, decimal.Decimal):
        return left.as_tuple() == right.as_tuple()
    if isinstance(left, (datetime.datetime, datetime.time)):
        return left == right and left.utcoffset() == right.utcoffset()
    if isinstance(left, (list, tuple)):
        return len(left) == len(right) and all(map(same, left, right))
    if isinstance(left, dict):
        keys = {key: key for key in right}  # the key of right equal to each of left's
        return len(left) == len(right) and all(
            key in keys and same(key, keys[key]) and same(value, right[key])
            for key, value in left.items()
        )
    if isinstance(left, (set, frozenset)):
        items = {item: item for item in right}
        return len(left) == len(right) and all(
            item in items and same(item, items[item]) for item in left
        )
    if isinstance(left, (Box, FrozenBox, pydantic.BaseModel, Wrapped)):
        return same(vars(left), vars(right))
    return bool(left == right)  # an App is equal only to itself


# -- values ---------------------------------------------------------------------------

# datetime.timezone takes any offset strictly within a day, to the microsecond.
DAY = datetime.timedelta(days=1) - datetime.timedelta(microseconds=1)
offsets = st.none() | st.timedeltas(-DAY, DAY).map(datetime.timezone)
decimals = st.decimals(allow_nan=False)
finite_decimals = st.decimals(allow_nan=False, allow_infinity=False)  # as pydantic takes them
datetimes = st.datetimes(timezones=offsets)
times = st.times(timezones=offsets)
# Hashable, and equal to itself: a NaN key would not be found in a set or dict.
hashable_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | datetimes
    | st.dates()
    | times
    | st.timedeltas()
    | st.uuids()
    | decimals
    | st.just(APP)
)
hashables = st.recursive(
    hashable_leaves,
    lambda inner: (
        st.lists(inner, max_size=3).map(tuple)
        | st.frozensets(inner, max_size=3)
        | st.builds(FrozenBox, inner)
    ),
    max_leaves=6,
)
models = st.builds(
    Model,
    name=st.text(max_size=10),
    count=st.integers(-(2**63), 2**63 - 1),
    ratio=st.floats(allow_nan=False),
    blob=st.binary(max_size=10),
    day=st.dates(),
    at=times,
    span=st.timedeltas(),
    id=st.uuids(),
    ids=st.lists(st.integers(0, 2**32), max_size=3).map(tuple),
    tags=st.frozensets(st.text(max_size=5), max_size=3),
    scores=st.dictionaries(st.text(max_size=5), st.floats(allow_nan=False), max_size=3),
    inner=st.none() | st.builds(Inner, when=datetimes, amount=finite_decimals),
)
leaves = hashable_leaves | st.floats() | st.decimals() | models
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(hashables, inner, max_size=4)
        | st.sets(hashables, max_size=4)
        | st.frozensets(hashables, max_size=4)
        | st.builds(Box, inner, st.text(max_size=5))
        | st.builds(Wrapped, inner)
    ),
    max_leaves=12,
)
senders = st.none() | st.text(max_size=10) | st.integers(-(2**63), 2**64 - 1) | st.just(APP)


@FUZZ
@given(kwargs=st.dictionaries(st.text(max_size=10), values, max_size=4), sender=senders)
def test_every_supported_value_arrives_equal_and_of_the_same_type(
    kwargs: dict[str, Any], sender: Any
) -> None:
    envelope = process_codec().decode(encode(process_codec(), kwargs, sender))
    assert same(envelope.kwargs, kwargs)
    assert same(envelope.sender, sender)


# -- bytes that are not an event --------------------------------------------------------


def decodes_or_rejects(codec: Codec, data: bytes, *, stored: bool = False) -> None:
    """``data`` is an event, or a DecodingError; and nothing named on the wire ran."""
    try:
        envelope = codec.decode(data, stored=stored)
    except DecodingError as exc:
        assert type(exc) is DecodingError
        event(re.sub(r"\d+", "N", str(exc).partition(":")[0]))  # for --hypothesis-show-statistics
    else:
        assert isinstance(envelope, Envelope)
        event("decoded")
    assert TRAPPED == []
    assert NEVER_IMPORTED not in sys.modules


RECEIVER = process_codec()
SIGNED_RECEIVER = process_codec(signer=Signer(SIGNING_KEYS))

# Starts that get garbage past the header check, and up to the kwargs.
PREFIXES = [
    b"",
    ENVELOPE_HEAD,
    bytes([0x99]) + ENVELOPE_TAIL,
    bytes([0x9A]) + ENVELOPE_TAIL,
    ENVELOPE_HEAD + b"".join(msgpack.packb(field) for field in [TOKEN, 1, CHANNEL, None]),
]
garbage = st.tuples(st.sampled_from(PREFIXES), st.binary(max_size=300)).map(b"".join)


@FUZZ
@given(data=garbage, stored=st.booleans())
def test_arbitrary_bytes_are_an_event_or_a_decoding_error(data: bytes, stored: bool) -> None:
    decodes_or_rejects(RECEIVER, data, stored=stored)


def raw_ext(code: int, payload: bytes) -> msgpack.ExtType:
    """Any extension value, even with the codes ``msgpack.ExtType()`` refuses (below 0)."""
    return tuple.__new__(msgpack.ExtType, (code, payload))


CLASS_KEYS = [
    f"{__name__}:Box",
    f"{__name__}:FrozenBox",
    f"{__name__}:Model",
    f"{__name__}:Inner",
    f"{__name__}:Trap",
    f"{__name__}:Trap.__init__",
    f"{NEVER_IMPORTED}:Thing",
    "os:system",
    "builtins:eval",
    "pickle:loads",
    "",
]
ext_codes = st.sampled_from(list(Ext)) | st.integers(-128, 127)
msgpack_keys = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10)
)


def ext_payloads(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Payloads an extension value's decoder may understand, or garbage."""
    named = st.tuples(st.sampled_from([*CLASS_KEYS, "wrapped", "app"]), inner).map(list)
    return st.binary(max_size=20) | (inner | named).map(msgpack.packb)


msgpack_structures = st.recursive(
    msgpack_keys
    | st.builds(msgpack.Timestamp, st.integers(-(2**63), 2**63 - 1), st.integers(0, 999_999_999))
    | st.builds(raw_ext, ext_codes, st.binary(max_size=20)),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(msgpack_keys, inner, max_size=4)
        | st.builds(raw_ext, ext_codes, ext_payloads(inner))
    ),
    max_leaves=12,
)


@FUZZ
@given(
    sender=st.none() | msgpack_structures,
    kwargs=st.dictionaries(st.text(max_size=5), msgpack_structures, max_size=3)
    | msgpack_structures,
    kept=st.lists(msgpack_structures, max_size=2),
)
def test_arbitrary_msgpack_in_an_envelope_is_an_event_or_a_decoding_error(
    sender: Any, kwargs: Any, kept: list[Any]
) -> None:
    fields = [ENVELOPE_VERSION, TOKEN, 1, CHANNEL, sender, kwargs, 1.0, "h:1", *kept]
    decodes_or_rejects(RECEIVER, msgpack.packb(fields))


SENDING = process_codec()
EVENTS = [
    encode(SENDING, {}),
    encode(SENDING, {"n": -1, "s": "text", "b": b"\xff"}, sender="web"),
    encode(
        SENDING,
        {
            "t": (1, [2, {3, (4,)}], frozenset({"x"})),
            "when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
            "day": datetime.date(2026, 1, 2),
            "at": datetime.time(1, 2),
            "span": datetime.timedelta(days=-1, microseconds=5),
            "id": uuid.UUID(int=7),
            "amount": decimal.Decimal("-1.50"),
        },
        sender=APP,
    ),
    encode(SENDING, {"box": Box(FrozenBox((1, 2)), "l"), "wrapped": Wrapped([Wrapped(None)])}),
    encode(
        SENDING,
        {
            "model": Model(
                name="m",
                count=1,
                ratio=0.5,
                blob=b"",
                day=datetime.date(2026, 1, 2),
                at=datetime.time(3),
                span=datetime.timedelta(1),
                id=uuid.UUID(int=1),
                ids=(1,),
                tags=frozenset({"a"}),
                scores={"a": 1.0},
                inner=Inner(when=datetime.datetime(2026, 1, 2), amount=decimal.Decimal(1)),
            )
        },
        sender=7,
    ),
]


@st.composite
def mutated(draw: st.DrawFn, events: list[bytes]) -> bytes:
    """One of ``events`` with bytes flipped, inserted, deleted, or cut off."""
    data = bytearray(draw(st.sampled_from(events)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if action == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif action == "cut":
            del data[at:]
    return bytes(data)


@FUZZ
@given(data=mutated(EVENTS))
def test_mutated_events_are_an_event_or_a_decoding_error(data: bytes) -> None:
    decodes_or_rejects(RECEIVER, data)


SIGNER = Signer(SIGNING_KEYS)
SIGNED_EVENTS = [SIGNER.sign(envelope) for envelope in EVENTS]


@FUZZ
@given(
    data=garbage.map(lambda data: SIGNATURE_HEAD + data)
    | garbage.map(SIGNER.sign)
    | mutated(EVENTS).map(SIGNER.sign)
    | mutated(SIGNED_EVENTS)
)
def test_signing_codec_takes_any_bytes_as_an_event_or_a_decoding_error(data: bytes) -> None:
    decodes_or_rejects(SIGNED_RECEIVER, data)
