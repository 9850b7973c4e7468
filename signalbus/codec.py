"""Events to bytes and back: the msgpack envelope, and the type and sender registries.

An event on the wire is one msgpack array::

    [version, token, seq, channel, sender, kwargs, timestamp, origin]

An event that is also kept in its signal's history stream is published with a ninth
field, the stream entry id, which the server appends as it adds the entry (see
:mod:`signalbus.history`); the entry itself holds the eight-field form. An event
replayed from history is published with a tenth field, ``true``: replayed.
``token`` (8 random bytes) names the bus that sent it and comes first, at a fixed
offset, so a bus can recognise its own events from the first bytes without decoding.
The event id is ``token.hex()-seq``. Values msgpack does not know travel as
extension types. Decoding never imports or unpickles anything: a dataclass or
pydantic model is revived only when its class is already loaded in the receiving
process, and a registered type only when that process registered it; otherwise the
value arrives in its plain wire form (a dict, or what ``encode`` returned), as an
unregistered sender arrives as its name.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import functools
import re
import sys
import threading
import types
import typing as t
import uuid
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import msgpack

from .errors import ConfigurationError, DecodingError, EncodingError, MessageTooLargeError
from .event import Event
from .signing import Signer
from .wire import (
    APPENDED,
    ARRAY_HEADS,
    ENVELOPE_HEAD,
    ENVELOPE_TAIL,
    SEALING,
    SIGNED_OFFSET,
    event_id,
    head,
    seal,
)

__all__ = ["Codec", "Envelope"]

MAX_EXT_DEPTH = 32
"""How deep extension values (tuples, sets, dataclasses, ...) may nest. Each level is
a separate unpack (and pack) through Python frames, so this keeps both far from the
recursion limit; ``encode`` refuses what ``decode`` would, so no receiver drops a sent event."""
MSGPACK_MAX_NESTING = 1024
"""msgpack's own limit on arrays and maps nested in the envelope, or in one extension
value's payload: its packer refuses deeper values, and its unpacker (a fixed stack, no
recursion) deeper input, at once. Named here for messages and tests, not a setting.
Declared lengths need no limit of ours: ``unpackb`` refuses any that the message is too
short to hold before allocating anything."""
_TOO_DEEP = f"tuples, sets, dates and other extension values nested more than {MAX_EXT_DEPTH} deep"


class Ext(enum.IntEnum):
    """msgpack extension codes for the values msgpack does not carry natively."""

    TUPLE = 1
    SET = 2
    FROZENSET = 3
    DATETIME = 4
    DATE = 5
    TIME = 6
    TIMEDELTA = 7
    UUID = 8
    DECIMAL = 9
    DATACLASS = 10
    MODEL = 11
    REGISTERED = 12
    SENDER = 13


class Envelope(NamedTuple):
    """One decoded event."""

    token: bytes
    seq: int
    channel: str
    sender: Any
    kwargs: dict[str, Any]
    timestamp: float
    origin: str
    stream_id: str | None = None
    """The entry id in the signal's history stream, where it is kept."""
    replayed: bool = False

    @property
    def id(self) -> str:
        return event_id(self.token.hex(), self.seq)

    def event(
        self, own_token: bytes, *, kept: bool = False, group: str | None = None, attempt: int = 1
    ) -> Event:
        """The event as the process whose bus has ``own_token`` tells of it: to a
        receiver (``current_event()``), with its group and try to a group receiver, and
        with its sender and arguments too where it was read from history (``kept``)."""
        return Event(
            self.id,
            self.channel,
            self.origin,
            self.timestamp,
            self.token != own_token,
            replayed=self.replayed,
            sender=self.sender if kept else None,
            kwargs=self.kwargs if kept else None,
            stream_id=self.stream_id,
            group=group,
            attempt=attempt,
        )


class _RegisteredType(NamedTuple):
    name: str
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


class _Unencodable(TypeError):
    def __init__(self, value: Any) -> None:
        super().__init__(f"cannot encode a value of type {_type_name(type(value))}")
        self.value = value


def _itself(obj: Any) -> Any:
    return obj


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _class_key(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


_Clock = t.TypeVar("_Clock", datetime.datetime, datetime.time)
# What isoformat() writes for a UTC offset under a second, which fromisoformat() reads as
# UTC (CPython 3.11 to 3.13 at least).
_SUB_SECOND_OFFSET = re.compile(r"([+-])00:00:00\.(\d{6})$")


def _from_isoformat(cls: type[_Clock], text: str) -> _Clock:
    """``cls.fromisoformat(text)``, keeping a UTC offset under a second."""
    value = cls.fromisoformat(text)
    tiny = value.tzinfo is datetime.UTC and _SUB_SECOND_OFFSET.search(text)
    if tiny:
        offset = datetime.timedelta(microseconds=int(tiny[1] + tiny[2]))
        value = value.replace(tzinfo=datetime.timezone(offset))
    return value


# msgpack decodes its own timestamp extension (code -1, a 0xff byte on the wire) without
# asking the ext hook; only a payload with a 0xff byte is searched for one.
_TIMESTAMP_CODE = b"\xff"


def _holds_timestamp(value: Any) -> bool:
    """Whether ``value``, as one ``unpackb`` returned it, holds a msgpack Timestamp.

    Only its lists and dicts are searched: any other container is an extension value,
    whose payload was searched as it was unpacked. A loop, not recursion: msgpack
    nests up to MSGPACK_MAX_NESTING deep, past Python's recursion limit.
    """
    pending = [value]
    while pending:
        item = pending.pop()
        if type(item) is list:
            pending.extend(item)
        elif type(item) is dict:
            pending.extend(item)
            pending.extend(item.values())
        elif type(item) is msgpack.Timestamp:
            return True
    return False


_PLAIN_SENDER_TYPES = (str, int)
_ONLY_STR = frozenset({str})
_BUILTIN_BASES = (str, bytes, int, float, dict, list)


class _PackerPerThread(threading.local):
    """Each thread's own Packer (``threading.local`` runs ``__init__`` once per thread)."""

    def __init__(self, default: Callable[[Any], Any]) -> None:
        self.packer: msgpack.Packer | None = msgpack.Packer(default=default, strict_types=True)


class Codec:
    """Turns events into bytes and back, for one bus.

    Registrations are plain dict writes, safe under the GIL (and across fork: no lock
    to inherit held); encoding and decoding share no state but the registries.
    """

    def __init__(self, *, max_message_size: int, signer: Signer | None = None) -> None:
        self.max_message_size = max_message_size
        self.signer = signer if signer is not None else Signer(())
        # A receiver with the same limit must take whatever this bus sends.
        self._overhead = SEALING + APPENDED + (SIGNED_OFFSET if self.signer.signs else 0)
        self._largest_body = max_message_size - self._overhead
        # Registered senders, by id (how each travels) and by name (what arrives): held
        # weakly where Python allows, so a collected sender is forgotten.
        self._sender_names: dict[int, str] = {}
        self._senders_by_name: dict[str, Callable[[], Any]] = {}
        self._forget: dict[int, Callable[[], None]] = {}
        self._types_by_class: dict[type, _RegisteredType] = {}
        self._types_by_name: dict[str, _RegisteredType] = {}
        self._classes: dict[str, type] = {}
        # Each takes a value and the depth it is at (see MAX_EXT_DEPTH).
        self._encoders: dict[type, Callable[[Any, int], msgpack.ExtType]] = {
            tuple: lambda v, depth: self._ext(Ext.TUPLE, list(v), depth),
            set: lambda v, depth: self._ext(Ext.SET, list(v), depth),
            frozenset: lambda v, depth: self._ext(Ext.FROZENSET, list(v), depth),
            datetime.datetime: lambda v, _: msgpack.ExtType(Ext.DATETIME, v.isoformat().encode()),
            datetime.date: lambda v, _: msgpack.ExtType(Ext.DATE, v.isoformat().encode()),
            datetime.time: lambda v, _: msgpack.ExtType(Ext.TIME, v.isoformat().encode()),
            datetime.timedelta: lambda v, depth: self._ext(
                Ext.TIMEDELTA, [v.days, v.seconds, v.microseconds], depth
            ),
            uuid.UUID: lambda v, _: msgpack.ExtType(Ext.UUID, v.bytes),
            decimal.Decimal: lambda v, _: msgpack.ExtType(Ext.DECIMAL, str(v).encode()),
        }
        self._decoders: dict[int, Callable[[bytes, Callable[[bytes], Any]], Any]] = {
            Ext.TUPLE: lambda p, unpack: tuple(unpack(p)),
            Ext.SET: lambda p, unpack: set(unpack(p)),
            Ext.FROZENSET: lambda p, unpack: frozenset(unpack(p)),
            Ext.DATETIME: lambda p, _: _from_isoformat(datetime.datetime, p.decode()),
            Ext.DATE: lambda p, _: datetime.date.fromisoformat(p.decode()),
            Ext.TIME: lambda p, _: _from_isoformat(datetime.time, p.decode()),
            Ext.TIMEDELTA: lambda p, unpack: datetime.timedelta(*unpack(p)),
            Ext.UUID: lambda p, _: uuid.UUID(bytes=p),
            Ext.DECIMAL: lambda p, _: decimal.Decimal(p.decode()),
            Ext.DATACLASS: self._decode_dataclass,
            Ext.MODEL: self._decode_model,
            Ext.REGISTERED: self._decode_registered,
            Ext.SENDER: lambda p, _: self._sender_named(p.decode()),
        }
        self._top_ext_hook = functools.partial(self._ext_hook, 0)
        self._local = _PackerPerThread(functools.partial(self._default, 0))

    # -- registries ---------------------------------------------------------------

    def register_sender(self, obj: Any, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a sender's name must be a non-empty str, not {name!r}")
        if obj is None or type(obj) in _PLAIN_SENDER_TYPES:
            raise ConfigurationError(
                f"{obj!r} travels as itself and needs no registration; register objects "
                "that cannot cross a process boundary, such as an app"
            )
        key = id(obj)

        def forget(_: object = None) -> None:
            if self._sender_names.get(key) == name:
                del self._sender_names[key]
            if self._senders_by_name.get(name) is held:
                del self._senders_by_name[name]
            if self._forget.get(key) is forget:
                del self._forget[key]

        held: Callable[[], Any]
        try:
            held = weakref.ref(obj, forget)
        except TypeError:  # no weak references to it: held for as long as it is registered
            held = functools.partial(_itself, obj)
        self._sender_names[key] = name
        self._senders_by_name[name] = held
        self._forget[key] = forget

    def unregister_sender(self, obj: Any) -> None:
        """Forget ``obj`` as a sender (nothing happens if it was not registered)."""
        forget = self._forget.get(id(obj))
        if forget is not None:
            forget()

    def _sender_named(self, name: str) -> Any:
        """The object registered under ``name`` in this process, else the name itself."""
        held = self._senders_by_name.get(name)
        found = None if held is None else held()
        return name if found is None else found

    def register_type(
        self,
        cls: type,
        encode: Callable[[Any], Any],
        decode: Callable[[Any], Any],
        name: str | None = None,
    ) -> None:
        if not isinstance(cls, type):
            raise ConfigurationError(f"register_type() takes a class, not {cls!r}")
        entry = _RegisteredType(name or _type_name(cls), encode, decode)
        self._types_by_class[cls] = entry
        self._types_by_name[entry.name] = entry

    # -- encoding -----------------------------------------------------------------

    def encode(
        self,
        *,
        token: bytes,
        seq: int,
        channel: str,
        sender: Any,
        kwargs: dict[str, Any],
        timestamp: float,
        origin: str,
    ) -> bytes:
        """The event as bytes; raises :class:`EncodingError` naming what cannot travel."""
        return seal(head(token), seq, self.encode_body(channel, sender, kwargs, timestamp, origin))

    def encode_body(
        self, channel: str, sender: Any, kwargs: dict[str, Any], timestamp: float, origin: str, /
    ) -> bytes:
        """What follows the sending bus's token and number in the event: see :func:`seal`.

        Numbering comes last, so that a bus can encode (running registered ``encode``
        functions, which may take time or even send events themselves) before it takes
        the lock under which it numbers and queues.
        """
        wire_sender = self._wire_sender(channel, sender)
        try:
            body = self._pack_envelope([channel, wire_sender, kwargs, timestamp, origin])
        except (TypeError, ValueError, OverflowError) as exc:
            raise self._explain(channel, kwargs, exc) from exc
        if len(body) > self._largest_body:
            size = len(body) + self._overhead
            raise MessageTooLargeError(
                f"signal {channel!r}: the event takes up to {size} bytes on the wire (with "
                "its number, signature and history entry id), over the bus's "
                f"max_message_size of {self.max_message_size}; send an id or a reference "
                "instead of the data, or raise max_message_size"
            )
        return body

    def _pack_envelope(self, envelope: list[Any]) -> bytes:
        """Pack with this thread's reusable Packer (cheaper than a new one per event).

        The Packer is taken out while in use, so a re-entrant call (an ``encode``
        function that sends an event) gets a fresh one instead of corrupting it.
        """
        local = self._local
        packer = getattr(local, "packer", None)
        if packer is None:
            return self._pack(envelope, 0)
        local.packer = None
        try:
            data: bytes = packer.pack(envelope)
        except BaseException:
            packer.reset()
            raise
        finally:
            local.packer = packer
        return data

    def _pack(self, value: Any, depth: int) -> bytes:
        """``value`` packed, the extension values in it being ``depth`` deep."""
        default = functools.partial(self._default, depth)
        data: bytes = msgpack.packb(value, default=default, strict_types=True)
        return data

    def _ext(self, code: Ext, value: Any, depth: int) -> msgpack.ExtType:
        """An extension value at ``depth`` whose payload is ``value``, packed."""
        return msgpack.ExtType(code, self._pack(value, depth + 1))

    def _registered_sender(self, value: Any) -> msgpack.ExtType | None:
        """``value`` as its registered sender name, if it was registered as a sender."""
        name = self._sender_names.get(id(value))
        return None if name is None else msgpack.ExtType(Ext.SENDER, name.encode())

    def _wire_sender(self, channel: str, sender: Any) -> Any:
        if sender is None or type(sender) in _PLAIN_SENDER_TYPES:
            return sender
        registered = self._registered_sender(sender)
        if registered is not None:
            return registered
        raise EncodingError(
            f"signal {channel!r}: the sender {sender!r} (a {_type_name(type(sender))}) "
            "cannot cross processes; name it with bus.register_sender(sender, 'a-name'), "
            "or send with a str, int or None sender"
        )

    def _default(self, depth: int, value: Any) -> Any:
        if depth >= MAX_EXT_DEPTH:
            raise ValueError(_TOO_DEEP)
        cls = type(value)
        registered = self._types_by_class.get(cls)
        if registered is not None:
            return self._ext(Ext.REGISTERED, [registered.name, registered.encode(value)], depth)
        encoder = self._encoders.get(cls)
        if encoder is not None:
            return encoder(value, depth)
        registered_sender = self._registered_sender(value)
        if registered_sender is not None:
            return registered_sender
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            return self._ext(Ext.DATACLASS, [_class_key(cls), fields], depth)
        pydantic = sys.modules.get("pydantic")
        if pydantic is not None and isinstance(value, pydantic.BaseModel):
            # By alias: what model_validate() reads back, aliases or not.
            dump = value.model_dump(round_trip=True, by_alias=True)
            return self._ext(Ext.MODEL, [_class_key(cls), dump], depth)
        if isinstance(value, _BUILTIN_BASES) and not isinstance(value, enum.Enum):
            base: Any = next(base for base in _BUILTIN_BASES if isinstance(value, base))
            return base(value)
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value)
        raise _Unencodable(value)

    def _explain(self, channel: str, kwargs: dict[str, Any], exc: Exception) -> EncodingError:
        """Name the argument that failed: worth a second pass, on the error path only."""
        culprit = next((key for key, value in kwargs.items() if not self._packs(value)), None)
        where = f"argument {culprit!r}" if culprit else "the event"
        if isinstance(exc, _Unencodable):
            name = _type_name(type(exc.value))
            return EncodingError(
                f"signal {channel!r}: {where} holds a {name}, which cannot be sent to other "
                f"processes; register it with bus.register_type({type(exc.value).__qualname__}, "
                "encode, decode) or send a plain value"
            )
        return EncodingError(f"signal {channel!r}: {where} cannot be encoded: {exc}")

    def _packs(self, value: Any) -> bool:
        try:
            self._pack(value, 0)
        except (TypeError, ValueError, OverflowError):
            return False
        return True

    # -- decoding -----------------------------------------------------------------

    def decode(self, data: bytes, *, stored: bool = False) -> Envelope:
        """The event in ``data``; raises :class:`DecodingError` for anything else.

        Its signature is checked first when the bus has signing keys; ``stored``
        requires the eight-field form that history keeps.
        """
        if len(data) > self.max_message_size:
            raise DecodingError(
                f"message of {len(data)} bytes is over max_message_size ({self.max_message_size})"
            )
        data = self.signer.open(data)
        if stored and not data.startswith(ENVELOPE_HEAD):
            raise DecodingError("not an event of eight fields, as history keeps them")
        if not (data[:1] and data[0] in ARRAY_HEADS and data.startswith(ENVELOPE_TAIL, 1)):
            raise DecodingError("not a signalbus envelope (or an unknown version)")
        try:
            fields = self._unpack(data, self._top_ext_hook)
        except DecodingError:
            raise
        except msgpack.StackError as exc:
            raise DecodingError(
                f"arrays and maps nested more than {MSGPACK_MAX_NESTING} deep"
            ) from exc
        except Exception as exc:  # garbage may fail in any way; it must not escape as such
            raise DecodingError(f"undecodable message: {exc!r}") from exc
        return self._check(fields)

    @staticmethod
    def _unpack(data: bytes, ext_hook: Callable[[int, bytes], Any]) -> Any:
        """The value in ``data``: the envelope, or an extension value's payload."""
        value = msgpack.unpackb(data, ext_hook=ext_hook, strict_map_key=False)
        if _TIMESTAMP_CODE in data and _holds_timestamp(value):
            raise DecodingError("msgpack timestamps are not part of the signalbus format")
        return value

    def _check(self, fields: Any) -> Envelope:
        if type(fields) is not list or len(fields) not in (8, 9, 10):
            raise DecodingError("malformed envelope")
        _, token, seq, channel, sender, kwargs, timestamp, origin, *kept = fields
        stream_id = kept[0] if kept else None
        if stream_id is not None and type(stream_id) is not str:
            raise DecodingError("malformed stream entry id")
        replayed = len(kept) == 2
        if replayed and kept[1] is not True:
            raise DecodingError("malformed replay mark")
        if not (
            type(token) is bytes
            and type(seq) is int
            and type(channel) is str
            and type(kwargs) is dict
            and _ONLY_STR.issuperset(map(type, kwargs))
            and type(timestamp) in (float, int)
            and type(origin) is str
        ):
            raise DecodingError("malformed envelope fields")
        if not (
            sender is None
            or type(sender) in _PLAIN_SENDER_TYPES
            or id(sender) in self._sender_names
        ):
            raise DecodingError(f"sender of type {type(sender).__name__} is not allowed")
        return Envelope(
            token, seq, channel, sender, kwargs, float(timestamp), origin, stream_id, replayed
        )

    def _ext_hook(self, depth: int, code: int, payload: bytes) -> Any:
        if depth >= MAX_EXT_DEPTH:
            raise DecodingError(_TOO_DEEP)
        decoder = self._decoders.get(code)
        if decoder is None:
            raise DecodingError(f"unknown extension type {code}")
        nested_hook = functools.partial(self._ext_hook, depth + 1)
        return decoder(payload, lambda inner: self._unpack(inner, nested_hook))

    def _decode_dataclass(self, payload: bytes, unpack: Callable[[bytes], Any]) -> Any:
        key, fields = unpack(payload)
        cls = self._loaded_class(key)
        if cls is None or not dataclasses.is_dataclass(cls):
            return fields
        init = {f.name for f in dataclasses.fields(cls) if f.init}
        return cls(**{name: value for name, value in fields.items() if name in init})

    def _decode_model(self, payload: bytes, unpack: Callable[[bytes], Any]) -> Any:
        key, fields = unpack(payload)
        cls = self._loaded_class(key)
        pydantic = sys.modules.get("pydantic")
        if cls is None or pydantic is None or not issubclass(cls, pydantic.BaseModel):
            return fields
        return t.cast(Any, cls).model_validate(fields)

    def _decode_registered(self, payload: bytes, unpack: Callable[[bytes], Any]) -> Any:
        name, value = unpack(payload)
        entry = self._types_by_name.get(name)
        return value if entry is None else entry.decode(value)

    def _loaded_class(self, key: Any) -> type | None:
        """The class named ``module:qualname``, looked up in modules already imported.

        Only dictionaries are read (no ``getattr``), so no module ``__getattr__``
        or descriptor runs on a name that came from the wire.
        """
        if type(key) is not str:
            raise DecodingError("malformed class name")
        cls = self._classes.get(key)
        if cls is not None:
            return cls
        module_name, _, qualname = key.partition(":")
        found: Any = sys.modules.get(module_name)
        for part in qualname.split("."):
            if not isinstance(found, (types.ModuleType, type)):
                return None
            found = vars(found).get(part)
        if not isinstance(found, type):
            return None
        self._classes[key] = found
        return found
