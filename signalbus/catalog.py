"""The catalog: the signals a system defines, what they carry, and who listens now.

Every bus records each signal it carries (made with it, or using the default bus it
is) in one hash, ``<prefix>signalbus:catalog``: the field is the channel, the value a
JSON object with its doc, its schema's name and JSON Schema, its history retention,
and which process recorded it when. Recording happens in a thread of its own, once
per signal and process, so defining a signal never waits on Redis, and a Redis that
is away only delays it.

Processes that define a signal alike agree on its record. Where they differ (a
listener that names the signal bare; two versions of a schema during a rolling
deploy), a definition with a doc or a schema replaces the record, and a bare one
never does: the catalog keeps the richest, latest word. :func:`listing` joins the
records with what Redis knows now: subscribed processes, history kept, groups.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import redis

from .errors import ConfigurationError
from .history import History
from .keyspace import catalog_key, channel_key, history_channels, stream_key
from .stats import ThrottledLog, logger
from .transport import NETWORK_ERRORS, Backoff

if TYPE_CHECKING:
    from .signals import Signal

__all__ = ["CatalogWriter", "Definition", "Listing", "definition", "listing"]


@dataclasses.dataclass(frozen=True)
class Definition:
    """One signal as the process that recorded it defines it."""

    channel: str
    doc: str | None = None
    schema_name: str | None = None
    schema: dict[str, Any] | None = None
    """The schema's JSON Schema, as pydantic writes it."""
    history: dict[str, int | None] | None = None
    """``max_count`` and ``max_age`` (seconds, or None) of its history; None: not kept."""
    origin: str = ""
    recorded: float = 0.0

    @property
    def bare(self) -> bool:
        """Whether it says nothing but the channel's name and history."""
        return self.doc is None and self.schema is None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, channel: str, text: bytes) -> Definition:
        """The record of ``channel``; fields it does not know (a newer version's) are
        left out, and one that is not ours reads as a bare definition."""
        try:
            fields = json.loads(text)
            known = {field.name for field in dataclasses.fields(cls)} & fields.keys()
            return cls(**{**{name: fields[name] for name in known}, "channel": channel})
        except (ValueError, TypeError, AttributeError):
            logger.warning("signalbus: catalog record of %r is unreadable; ignored", channel)
            return cls(channel)


def definition(signal: Signal, history: History | None, origin: str) -> Definition:
    """What ``signal`` says of itself, with the retention its bus gives it."""
    schema = signal.schema
    return Definition(
        channel=signal.channel,
        doc=vars(signal).get("__doc__"),  # the class's docstring says nothing of this signal
        schema_name=None if schema is None else schema.__name__,
        schema=None if schema is None else _json_schema(schema, signal.channel),
        history=None
        if history is None
        else {
            "max_count": history.max_count,
            "max_age": None if history.max_age is None else int(history.max_age.total_seconds()),
        },
        origin=origin,
        recorded=time.time(),
    )


def _json_schema(schema: Any, channel: str) -> dict[str, Any] | None:
    """The model's JSON Schema; None, with a warning, for a model that has none (a
    field of an arbitrary type): the signal is recorded, and works, without it."""
    try:
        found: dict[str, Any] = schema.model_json_schema()
    except Exception as exc:  # pydantic's PydanticInvalidForJsonSchema, or a model's own
        logger.warning("signalbus: signal %r: no JSON Schema for the catalog: %s", channel, exc)
        return None
    return found


class CatalogWriter:
    """Records the signals of one bus in one process, in the background.

    Its thread runs while there is something to write, and ends when there is not.
    A network error is retried with backoff until the bus closes; a refusal (an ACL
    without the catalog's key, say) is logged, at most every few minutes, and the
    records dropped.
    """

    def __init__(
        self, client: redis.Redis, prefix: str, describe: Callable[[Signal], Definition]
    ) -> None:
        self._client = client
        self._key = catalog_key(prefix)
        self._describe = describe
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[str, Definition] = {}
        self._recorded: set[str] = set()
        self._thread: threading.Thread | None = None
        self._unreachable = False  # the last write failed on the network
        self._log = ThrottledLog(interval=300.0)

    def record(self, signals: Iterable[Signal]) -> None:
        """Record ``signals``, those not recorded by this process yet, soon."""
        with self._lock:
            for signal in signals:
                if signal.channel not in self._recorded:
                    self._recorded.add(signal.channel)
                    self._pending[signal.channel] = self._describe(signal)
            if self._pending and self._thread is None and not self._closing.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="signalbus-catalog", daemon=True
                )
                self._thread.start()

    def close(self, timeout: float) -> None:
        """Give what is pending up to ``timeout`` seconds to be written (unless Redis
        is unreachable: a closing bus does not wait for it), then stop."""
        thread = self._thread
        if thread is not None and not self._unreachable:
            thread.join(timeout)
        self._closing.set()

    def _run(self) -> None:
        backoff = Backoff(self._closing)
        while not self._closing.is_set():
            with self._lock:
                batch = list(self._pending.values())
                if not batch:
                    self._thread = None
                    return
            try:
                self._write(batch)
            except NETWORK_ERRORS:
                self._unreachable = True
                if backoff.wait():
                    return
                continue
            except ConfigurationError:  # a server the bus cannot use (logged where found)
                return
            except redis.RedisError as exc:
                self._log.warning(
                    "refused", "signalbus: the catalog was not updated: Redis refused: %s", exc
                )
            backoff.reset()
            self._unreachable = False
            with self._lock:
                for done in batch:
                    if self._pending.get(done.channel) is done:
                        del self._pending[done.channel]

    def _write(self, batch: list[Definition]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for found in batch:
            write = pipe.hsetnx if found.bare else pipe.hset
            write(self._key, found.channel, found.to_json())
        pipe.execute()


@dataclasses.dataclass(frozen=True)
class Listing:
    """One signal as ``signalbus ls`` shows it: its record and what Redis knows now."""

    definition: Definition
    subscribers: int
    """Connections subscribed to its channel: one per process that receives it."""
    history_length: int
    """Events kept in its stream."""
    groups: list[str]


def listing(client: redis.Redis, prefix: str) -> list[Listing]:
    """Every signal in the catalog, and every one with a history stream, by channel."""
    definitions: dict[str, Definition] = {}
    recorded: dict[bytes, bytes] = cast(Any, client.hgetall(catalog_key(prefix)))
    for field, text in recorded.items():
        channel = field.decode(errors="replace")
        definitions[channel] = Definition.from_json(channel, text)
    pattern, head = history_channels(prefix)
    for key in client.scan_iter(match=pattern, _type="stream"):
        channel = key[head:].decode(errors="replace")
        definitions.setdefault(channel, Definition(channel))
    if not definitions:
        return []
    channels = sorted(definitions)
    keys = [channel_key(prefix, channel) for channel in channels]
    pipe = client.pipeline(transaction=False)
    pipe.pubsub_numsub(*keys)
    for channel in channels:
        pipe.xlen(stream_key(prefix, channel))
        pipe.xinfo_groups(stream_key(prefix, channel))
    # A stream that is not there answers XINFO GROUPS with an error: no groups.
    numsub, *per_stream = pipe.execute(raise_on_error=False)
    subscribers = {key: int(count) for key, count in numsub}
    return [
        Listing(
            definitions[channel],
            subscribers.get(key, 0),
            length,
            [] if isinstance(groups, Exception) else sorted(g["name"].decode() for g in groups),
        )
        for channel, key, length, groups in zip(
            channels, keys, per_stream[::2], per_stream[1::2], strict=True
        )
    ]
