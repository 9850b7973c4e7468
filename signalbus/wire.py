"""The byte layout of an event on the wire: the one place it is written down.

An event is one msgpack array (see :mod:`signalbus.codec` for its fields)::

    0x98 | version | 0xc4 0x08 <token> | <seq> | channel, sender, kwargs, timestamp, origin

The sending bus's token comes at a fixed offset, so a bus tells its own events from
their first bytes. Where history keeps the event, the server publishes it as an array
of nine (``0x99``), the stream entry id appended; a replayed event is an array of ten
(``0x9a``), the entry id and ``true`` appended. A signing bus puts ``0xc4 0x20`` and an
HMAC of 32 bytes before the array (see :mod:`signalbus.signing`); the signature covers
the eight-field form, as history keeps it.
"""

from __future__ import annotations

import struct

import msgpack

from .errors import DecodingError

__all__ = [
    "ENVELOPE_VERSION",
    "REPLAY_HEAD",
    "SIGNATURE_HEAD",
    "SIGNATURE_SIZE",
    "SIGNED_OFFSET",
    "TOKEN_SIZE",
    "envelope_at",
    "event_id",
    "head",
    "replayed",
    "seal",
    "signed_end",
]

ENVELOPE_VERSION = 1
TOKEN_SIZE = 8
SENT_HEAD = 0x98
"""The array of eight fields, as a bus sends an event and history keeps it."""
KEPT_HEAD = 0x99
"""The array of nine: the stream entry id appended."""
REPLAY_HEAD = 0x9A
"""The array of ten: the stream entry id and ``true`` (replayed) appended."""
ARRAY_HEADS = (SENT_HEAD, KEPT_HEAD, REPLAY_HEAD)
ENVELOPE_HEAD = bytes([SENT_HEAD, ENVELOPE_VERSION, 0xC4, TOKEN_SIZE])
"""What every event starts with, up to its token."""
ENVELOPE_TAIL = ENVELOPE_HEAD[1:]
"""That start without the array's size, which differs as fields are appended."""

SIGNATURE_SIZE = 32
SIGNATURE_HEAD = bytes([0xC4, SIGNATURE_SIZE])
"""A msgpack bin of 32 bytes: the HMAC a signing bus puts before the array."""
SIGNED_OFFSET = len(SIGNATURE_HEAD) + SIGNATURE_SIZE
"""Where the array starts in a signed message."""

_REPLAY_MARK: bytes = msgpack.packb(True)
_STREAM_ID_CHARACTERS = b"0123456789-"

_FIXINT = [bytes([n]) for n in range(0x80)]
_UINT32 = struct.Struct(">BI").pack
_UINT64 = struct.Struct(">BQ").pack

SEALING = len(ENVELOPE_HEAD) + TOKEN_SIZE + 9 - 1
"""What :func:`seal` adds to a body at most: the head and token, a uint64, less the
body's own array head."""
APPENDED = 2 + 41 + 1
"""What the server may append to an event, which counts against a receiver's
``max_message_size`` as the event does: the stream entry id (a str8 of at most 41
characters, ``<uint64>-<uint64>``) and the replay mark."""


def head(token: bytes) -> bytes:
    """What every event of the bus whose token is ``token`` starts with."""
    return ENVELOPE_HEAD + token


def seal(head: bytes, seq: int, body: bytes) -> bytes:
    """The event numbered ``seq``: its bus's ``head``, the number, then ``body`` (an
    array of the five other fields) without its own array head."""
    if seq < 0x80:
        number = _FIXINT[seq]
    elif seq < 1 << 32:
        number = _UINT32(0xCE, seq)
    else:
        number = _UINT64(0xCF, seq)
    return head + number + body[1:]


def event_id(token_hex: str, seq: int) -> str:
    """The id of the ``seq``-th event sent by the bus whose token is ``token_hex``."""
    return f"{token_hex}-{seq}"


def envelope_at(message: bytes) -> int:
    """Where the array starts in ``message``: after a signature, if it has one."""
    return SIGNED_OFFSET if message.startswith(SIGNATURE_HEAD) else 0


def replayed(entry: bytes, stream_id: str) -> bytes:
    """The message that replays a kept ``entry`` (the eight-field form, signed or not)."""
    at = envelope_at(entry)
    return b"".join(
        (entry[:at], bytes([REPLAY_HEAD]), entry[at + 1 :], msgpack.packb(stream_id), _REPLAY_MARK)
    )


def signed_end(message: bytes) -> int:
    """Where the envelope of a signed ``message`` ends as it was signed: before the
    entry id and replay mark the server appended, if any."""
    if len(message) <= SIGNED_OFFSET:
        raise DecodingError("empty message")
    array = message[SIGNED_OFFSET]
    if array == SENT_HEAD:
        return len(message)
    end = len(message)
    if array == REPLAY_HEAD and message[-1:] == _REPLAY_MARK:
        end -= 1
    elif array != KEPT_HEAD:
        raise DecodingError("not a signalbus envelope (or an unknown version)")
    # The id is a msgpack string of digits and a dash, none of which can be its header
    # (a fixstr header, or str8's length byte: ids are at most 41 long).
    digits = end - len(message[:end].rstrip(_STREAM_ID_CHARACTERS))
    header_at = end - digits - 1
    if header_at - 1 <= SIGNED_OFFSET:
        raise DecodingError("malformed stream entry id")
    if 0 < digits < 32 and message[header_at] == 0xA0 + digits:
        return header_at
    if digits >= 32 and message[header_at] == digits and message[header_at - 1] == 0xD9:
        return header_at - 1
    raise DecodingError("malformed stream entry id")


def script_arguments() -> tuple[bytes, bytes, bytes]:
    """What the history script needs of this layout to publish a kept event as an array
    of nine: the signature's first byte, the array's position after a signature (from
    1, as Lua counts), and the array head with the entry id appended."""
    return (b"%d" % SIGNATURE_HEAD[0], b"%d" % (SIGNED_OFFSET + 1), b"%d" % KEPT_HEAD)
