"""Signed messages: HMAC-SHA256 over each event, checked before anything is decoded.

With signing keys, a bus signs every event with the first key and accepts an event
signed with any of them, so keys rotate without downtime: add the new key second
everywhere, then move it first, then drop the old one. A signed message is
``0xc4 0x20`` (a msgpack bin of 32 bytes), the signature, then the envelope. The
signature covers the envelope in its eight-field form, as history keeps it, which
names the event's channel: a message moved to another channel is refused there as
naming the wrong channel, and the fields the server appends (the stream entry id, a
replay mark) are taken off before checking. Without keys a bus neither signs nor
checks, and takes signed messages as they are.

Threat model: Redis ACLs and TLS keep strangers off the server; signing protects the
receivers against anyone else who can publish on it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable

from .errors import ConfigurationError, DecodingError
from .wire import SENT_HEAD, SIGNATURE_HEAD, SIGNED_OFFSET, signed_end

__all__ = ["MIN_KEY_SIZE", "Signer"]

_KEPT = bytes([SENT_HEAD])  # signed as history keeps it: the eight-field form


MIN_KEY_SIZE = 16
"""The shortest signing key accepted, in bytes (encoded as UTF-8).

Anyone who can subscribe sees signed messages, and can then try keys offline as fast as
SHA-256 runs, with no server to slow them down: a short key (a word, a name) falls in
minutes. 16 random bytes (128 bits) are out of reach; a passphrase needs more than that.
"""


class _Key:
    """HMAC-SHA256 (RFC 2104) with one key, its padded hashes made once.

    ``hmac.digest`` sets the key up again for every message, which costs more than
    hashing a small event; copying the two keyed hashes costs less than half of it.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_INNER_PAD))
        self._outer = hashlib.sha256(key.translate(_OUTER_PAD))

    def digest(self, *parts: bytes | memoryview) -> bytes:
        """The HMAC of ``parts`` joined (parts save joining them into a copy)."""
        inner = self._inner.copy()
        for part in parts:
            inner.update(part)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


_BLOCK = 64  # SHA-256's block size
_INNER_PAD = bytes(byte ^ 0x36 for byte in range(256))
_OUTER_PAD = bytes(byte ^ 0x5C for byte in range(256))


class Signer:
    """Signs what a bus sends and opens what it receives.

    ``keys`` is one key (a ``str`` or ``bytes``) or several, the signing one first; none
    means no signing. ``source`` names where they came from, for error messages.
    """

    def __init__(
        self, keys: str | bytes | Iterable[str | bytes], source: str = "signing_keys"
    ) -> None:
        self.keys = [_Key(key) for key in _checked(keys, source)]

    @classmethod
    def from_environment(cls) -> Signer:
        """With the keys of ``$SIGNALBUS_SIGNING_KEYS``: separated by commas (the only
        place where a comma separates keys), the signing one first, spaces around each
        taken off; unset or blank, none."""
        text = os.environ.get("SIGNALBUS_SIGNING_KEYS", "")
        keys = [key.strip() for key in text.split(",")] if text.strip() else []
        return cls(keys, "$SIGNALBUS_SIGNING_KEYS")

    @property
    def signs(self) -> bool:
        return bool(self.keys)

    def sign(self, envelope: bytes) -> bytes:
        return SIGNATURE_HEAD + self.keys[0].digest(envelope) + envelope

    def open(self, message: bytes) -> bytes:
        """The envelope in ``message``, its signature checked if this bus has keys."""
        if not message.startswith(SIGNATURE_HEAD):
            if self.keys:
                raise DecodingError("unsigned message, and this bus checks signatures")
            return message
        if self.keys:
            view = memoryview(message)
            signed = view[SIGNED_OFFSET + 1 : signed_end(message)]  # after the array's size
            signature = view[len(SIGNATURE_HEAD) : SIGNED_OFFSET]
            if not any(
                hmac.compare_digest(key.digest(_KEPT, signed), signature) for key in self.keys
            ):
                raise DecodingError("bad signature: not signed with any of this bus's keys")
        return message[SIGNED_OFFSET:]


def _checked(keys: object, source: str) -> list[bytes]:
    """``keys`` as a list of keys, each one usable as a secret, or a ConfigurationError."""
    if isinstance(keys, (str, bytes)):  # one key, never one key per character
        keys = [keys]
    elif not isinstance(keys, Iterable):
        raise ConfigurationError(
            f"{source} must be a key (str or bytes) or a list of keys, not {type(keys).__name__}"
        )
    checked = []
    for position, key in enumerate(keys, 1):
        if not isinstance(key, (str, bytes)):
            raise ConfigurationError(
                f"{source}: key {position} is a {type(key).__name__}; a key is a str or bytes"
            )
        encoded = key.encode() if isinstance(key, str) else key
        if len(encoded) < MIN_KEY_SIZE:
            what = "empty" if not encoded else f"only {len(encoded)} bytes long"
            raise ConfigurationError(
                f"{source}: key {position} is {what}; a signing key must be at least "
                f"{MIN_KEY_SIZE} bytes, e.g. python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'"
            )
        checked.append(encoded)
    return checked
