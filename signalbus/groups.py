"""Groups: each event of a signal handled by one process of a group, at least once.

A receiver connected with ``group="mailer"`` is not a broadcast receiver: it runs in
exactly one of the processes that connected receivers in that group, on events read
from the signal's history stream through a Redis Streams consumer group of that name.
An event is acknowledged only once every group receiver of that process returned. If
one raises, the event stays pending and is tried again after a backoff (doubling per
attempt); after ``max_attempts`` it moves to a dead-letter stream, with the error and
the number of attempts. An event left unacknowledged by another process for
``claim_idle`` seconds (the process died, most likely) is claimed by a live one.
Delivery is at least once: inside a receiver ``current_event()`` gives the event id
and the attempt, so receivers can be idempotent.

Events trimmed from the history before the group handled them (it fell more than
10 x ``max_count`` behind) are lost to it: the member that finds so logs it, counts
it (``group_gaps``) and sends :data:`~signalbus.history_gap`, with ``group``.

Each bus runs one thread per group name it has receivers in. Besides the signal's
stream, a group reads a stream of its own, where events given to that group alone
again arrive: requeued dead letters, and replays into one group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import redis

from .codec import Codec, Envelope
from .errors import ArgumentError, ConfigurationError, DecodingError, ValidationError
from .event import Event, _current
from .history import decoded, entries
from .keyspace import dead_letter_key, retry_key
from .recovery import parse_id, report_gap
from .schema import validated
from .stats import Stats, ThrottledLog, logger
from .subscriber import call
from .transport import NETWORK_ERRORS, Backoff

if TYPE_CHECKING:
    from .signals import Signal

__all__ = [
    "DeadLetter",
    "Group",
    "GroupConsumer",
    "GroupStatus",
    "Member",
    "Route",
    "Streams",
    "check_group",
    "dead_letter_key",
    "retry_key",
]

_BLOCK_MS = 500
_BATCH = 100
# Handled events are acknowledged together, at the latest this long after the first of
# them: fewer round trips, and a process that dies repeats at most that much work.
_ACK_DELAY = 0.002
# A member that holds nothing and has not read for this long is gone (its process
# ended): it is removed from the group, so the group's status lists live members.
_GONE_AFTER = 3600.0
# KEYS[1] is the stream, ARGV[1] the group, ARGV[2] how many milliseconds ago it was
# asked for: the group is made (ARGV[3] CREATE) or put back (SETID) to be given what the
# stream got from then on, by the server's clock.
_SINCE = """
local now = redis.call('TIME')
local since = (now[1] * 1000 + math.floor(now[2] / 1000) - tonumber(ARGV[2])) .. '-0'
if ARGV[3] == 'SETID' then return redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], since) end
return redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], since, 'MKSTREAM')
"""
_MAX_ERRORS = 10_000  # last errors kept for dead letters, of events failing here


@dataclasses.dataclass(frozen=True)
class Group:
    """A group of processes that share a signal's events, each handled by one of them.

    ``start``: where a group that does not exist yet begins, ``"now"`` (the default)
    or ``"beginning"`` (everything the history still holds). ``max_attempts``: tries
    before an event goes to dead letters. ``retry_backoff``: seconds before the second
    try, doubling for each one after. ``claim_idle``: seconds an event may stay
    unacknowledged with another process before a live one takes it over.
    """

    name: str
    start: Literal["now", "beginning"] = "now"
    max_attempts: int = 5
    retry_backoff: float = 1.0
    claim_idle: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError(f"a group's name must be a non-empty str, not {self.name!r}")
        if self.start not in ("now", "beginning"):
            raise ConfigurationError(f"group {self.name!r}: start must be 'now' or 'beginning'")
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ConfigurationError(f"group {self.name!r}: max_attempts must be an int")
        if self.max_attempts < 1:
            raise ConfigurationError(f"group {self.name!r}: max_attempts must be at least 1")
        for option in ("retry_backoff", "claim_idle"):
            value = getattr(self, option)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(
                    f"group {self.name!r}: {option} must be a positive number of seconds"
                )

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed try."""
        return float(self.retry_backoff * 2 ** (attempts - 1))


def as_group(group: Group | str) -> Group:
    return group if isinstance(group, Group) else Group(group)


class Route(NamedTuple):
    """Where a stream a group reads belongs: its channel, and its dead-letter stream."""

    channel: str
    dead: bytes


Streams = dict[bytes, Route]
"""The streams a group reads in a process, by key."""

Handler = Callable[[bytes, Envelope, str, int], None]
"""Runs a group's receivers for one event: stream key, envelope, entry id, attempt."""


class GroupConsumer:
    """The thread of one group in one bus: reads, runs, acknowledges, retries, claims."""

    def __init__(
        self,
        client: redis.Redis,
        codec: Codec,
        group: Group,
        consumer: str,
        streams: Callable[[], Streams],
        handle: Handler,
        *,
        gap_sender: Any,
        stats: Stats,
        log: ThrottledLog,
        stopping: threading.Event,
    ) -> None:
        self.group = group
        self._client = client
        self._codec = codec
        self._consumer = consumer
        self._streams = streams
        self._name = group.name.encode()
        self._gap_sender = gap_sender
        self._handle = handle
        self._stats = stats
        self._log = log
        self._stopping = stopping
        self._created: set[bytes] = set()
        self._asked: dict[bytes, float] = {}  # when connect() asked for each stream
        self._reached: dict[bytes, str] = {}  # the last entry read, per stream
        self._errors: dict[tuple[bytes, str], str] = {}  # the last error, per failed entry
        self._next_pending_check = 0.0
        self._next_cleanup = time.monotonic() + _GONE_AFTER / 10
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._creating = threading.Lock()  # one creation at a time, and reads after it

    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self._stopping.is_set():
                self._thread = threading.Thread(
                    target=self._run, name=f"signalbus-group-{self.group.name}", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def join(self, timeout: float) -> None:
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        backoff = Backoff(self._stopping)
        while not self._stopping.is_set():
            try:
                streams = self._streams()
                if not streams:
                    self._wake.wait(_BLOCK_MS / 1000)
                    self._wake.clear()
                    continue
                self._create_missing(streams)
                if time.monotonic() >= self._next_pending_check:
                    self._retry_and_claim(streams)
                if time.monotonic() >= self._next_cleanup:
                    self._forget_gone_members(streams)
                self._read_new(streams)
                backoff.reset()
            except NETWORK_ERRORS as exc:
                self._unreachable(exc)
                backoff.wait()
            except ConfigurationError:  # a server the bus cannot use (logged where found)
                return
            except Exception:
                logger.exception("signalbus group %r: unexpected error; going on", self.group.name)
                backoff.wait()

    def prepare(self, streams: Streams, timeout: float) -> None:
        """Create the group on ``streams`` now, so that ``connect()`` returns with it in
        place; waits at most ``timeout`` (a thread of its own does the I/O). If Redis
        cannot be reached, or is slow to answer, the group's thread creates it later;
        a refusal (an ACL) is raised."""
        refused: list[Exception] = []
        now = time.monotonic()
        with self._lock:
            for stream in streams:
                self._asked.setdefault(stream, now)
        waiting = threading.Event()  # set while connect() waits for the group
        waiting.set()

        def create() -> None:
            try:
                self._create_missing(streams, waiting)
            except NETWORK_ERRORS as exc:
                self._unreachable(exc)
            except Exception as exc:
                refused.append(exc)

        creating = threading.Thread(
            target=create, name=f"signalbus-group-{self.group.name}-create", daemon=True
        )
        creating.start()
        creating.join(timeout)
        waiting.clear()
        if refused:
            raise refused[0]

    def _unreachable(self, exc: Exception) -> None:
        self._log.warning(
            f"group:{self.group.name}", "group %r cannot reach Redis: %s", self.group.name, exc
        )

    def _create_missing(self, streams: Streams, waiting: threading.Event | None = None) -> None:
        """Create the group where it is missing; ``waiting`` is set while a connect()
        waits for it. The group's thread waits here too: it reads once it is made."""
        with self._creating:
            with self._lock:
                missing = streams.keys() - self._created
            for stream in missing:
                start = "0" if self.group.start == "beginning" else None
                self._create(stream, start, waiting)

    def _create(
        self, stream: bytes, start: str | None, waiting: threading.Event | None = None
    ) -> bool:
        """Create the group on ``stream`` if it is not there; whether it was not.

        ``start`` None is "now": while connect() waits, from the stream's end when it is
        made (what is sent once connect() returns comes after); made late (Redis away,
        or slow), from when connect() asked, by the server's clock (a millisecond's
        margin: an event sent just before may come too), so nothing sent since is missed.
        """
        try:
            if start is not None:
                self._client.xgroup_create(stream, self.group.name, id=start, mkstream=True)
            elif waiting is not None and waiting.is_set():
                self._client.xgroup_create(stream, self.group.name, id="$", mkstream=True)
                if not waiting.is_set():  # connect() returned before the group was there
                    self._since_asked(stream, "SETID")
            else:
                self._since_asked(stream, "CREATE")
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            created = False
        else:
            created = True
        with self._lock:
            self._created.add(stream)
        return created

    def _since_asked(self, stream: bytes, how: Literal["CREATE", "SETID"]) -> None:
        """Make the group (or put it back) to read ``stream`` from when connect() asked."""
        with self._lock:
            asked = self._asked.get(stream, time.monotonic())
        elapsed = int(1000 * (time.monotonic() - asked)) + 1
        try:
            self._client.eval(_SINCE, 1, stream, self.group.name, elapsed, how)
        except redis.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                raise
            # No scripting for this user (its ACL): from now, when it is made (a group
            # made already stays where it was made).
            if how == "CREATE":
                self._client.xgroup_create(stream, self.group.name, id="$", mkstream=True)

    def _read_new(self, streams: Streams) -> None:
        """Handle what the group was not given yet; when there is nothing, wait for it."""
        try:
            replies = self._read_checked(streams) or self._client.xreadgroup(
                self.group.name,
                self._consumer,
                {stream: ">" for stream in streams},
                count=_BATCH,
                block=_BLOCK_MS,
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc) and "no such key" not in str(exc):
                raise
            # The stream or the group went away (a restart without persistence, say):
            # create it again from the start of what the stream holds now. What the
            # group had not been given went with it: the member that finds out says so.
            lost: dict[str, str] = {}
            for stream, route in streams.items():
                known = stream in self._created
                if self._create(stream, "0") and known:
                    lost.setdefault(route.channel, self._reached.get(stream, "0-0"))
            for channel, reached in lost.items():
                why = "the group was gone from Redis (its data lost, or the group deleted)"
                self._gap(channel, reached, None, why)
            return
        for stream, found in cast(list[tuple[bytes, list[Any]]], replies or []):
            handled: list[str] = []
            oldest = 0.0
            if found:
                self._reached[stream] = found[-1][0].decode()
            for entry_id, fields in found:
                if self._process(stream, streams, entry_id.decode(), fields, attempt=1):
                    handled.append(entry_id.decode())
                    now = time.monotonic()
                    oldest = oldest or now
                    if now - oldest >= _ACK_DELAY:
                        self._ack(stream, handled)
                        handled, oldest = [], 0.0
            self._ack(stream, handled)

    def _read_checked(self, streams: Streams) -> Any:
        """Read without waiting, in one transaction with where the group stood and
        where each stream begins: a group whose last entry given is older than the
        stream's first lost what lay between (trimmed while it was too far behind),
        and this member, the one reading past them, says so."""
        pipeline = self._client.pipeline(transaction=True)
        for stream in streams:
            pipeline.xinfo_groups(stream)
            pipeline.xrange(stream, count=1)
        pipeline.xreadgroup(
            self.group.name, self._consumer, {stream: ">" for stream in streams}, count=_BATCH
        )
        *where, replies = pipeline.execute()
        for route, groups, first in zip(streams.values(), where[::2], where[1::2], strict=True):
            reached = next(
                (g["last-delivered-id"].decode() for g in groups if g["name"] == self._name),
                "0-0",
            )
            if first and reached != "0-0" and parse_id(reached) < parse_id(first[0][0].decode()):
                why = "events after it were trimmed before the group was given them"
                self._gap(route.channel, reached, first[0][0].decode(), why)
        return replies

    def _ack(self, stream: bytes, handled: list[str]) -> None:
        if handled:
            self._client.xack(stream, self.group.name, *handled)
            for entry_id in handled:
                self._errors.pop((stream, entry_id), None)
            self._stats.add("group_handled", len(handled))  # one thread per group writes it

    def _retry_and_claim(self, streams: Streams) -> None:
        """Try again what failed here and is due, take over what another process left."""
        group = self.group
        soonest = min(group.retry_backoff, group.claim_idle)
        self._next_pending_check = time.monotonic() + soonest / 2
        for stream, route in streams.items():
            pending = self._client.xpending_range(
                stream, group.name, "-", "+", _BATCH, idle=int(soonest * 1000)
            )
            for entry in self._without_trimmed(stream, route, cast(list[dict[str, Any]], pending)):
                attempts = int(entry["times_delivered"])
                mine = entry["consumer"].decode() == self._consumer
                due = group.backoff(attempts) if mine else group.claim_idle
                if int(entry["time_since_delivered"]) >= due * 1000:
                    self._claim(stream, streams, entry["message_id"].decode(), due, attempts)

    def _without_trimmed(
        self, stream: bytes, route: Route, pending: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """``pending`` but the entries trimmed from the stream (the group fell too far
        behind): those can never be handled. They are acknowledged, to leave the
        group's pending list, and reported by the member whose acknowledgement took them."""
        if not pending:
            return pending
        first = cast(list[tuple[bytes, Any]], self._client.xrange(stream, count=1))
        kept_from = first[0][0].decode() if first else None
        gone = [
            entry["message_id"].decode()
            for entry in pending
            if kept_from is None or parse_id(entry["message_id"].decode()) < parse_id(kept_from)
        ]
        if gone and self._client.xack(stream, self.group.name, *gone):
            why = f"{len(gone)} events given to the group and not yet handled were trimmed"
            self._gap(route.channel, gone[0], kept_from, why)
        return [entry for entry in pending if entry["message_id"].decode() not in gone]

    def _gap(self, channel: str, last_seen: str, first_kept: str | None, why: str) -> None:
        """This group lost events of ``channel``: logged, counted (``group_gaps``) and
        sent as :data:`~signalbus.history_gap`, with ``group``, in this process."""
        report_gap(
            self._gap_sender,
            self._stats,
            self._log,
            "group_gaps",
            channel,
            last_seen,
            first_kept,
            why,
            group=self.group.name,
        )

    def _forget_gone_members(self, streams: Streams) -> None:
        self._next_cleanup = time.monotonic() + _GONE_AFTER / 10
        for stream in streams:
            for member in self._client.xinfo_consumers(stream, self.group.name):
                gone = member["pending"] == 0 and member["idle"] > _GONE_AFTER * 1000
                if gone and member["name"].decode() != self._consumer:
                    self._client.xgroup_delconsumer(stream, self.group.name, member["name"])

    def _claim(
        self, stream: bytes, streams: Streams, entry_id: str, due: float, attempts: int
    ) -> None:
        """Take ``entry_id`` over (unless another process just did) and try it again, or
        move it to dead letters when it had all its tries."""
        claimed = self._client.xclaim(
            stream, self.group.name, self._consumer, int(due * 1000), [entry_id]
        )
        for _, fields in cast(list[tuple[bytes, Any]], claimed):
            if attempts >= self.group.max_attempts:
                self._dead_letter(stream, streams[stream].dead, entry_id, fields, attempts)
            elif self._process(stream, streams, entry_id, fields, attempts + 1):
                self._ack(stream, [entry_id])

    def _process(
        self,
        stream: bytes,
        streams: Streams,
        entry_id: str,
        fields: dict[bytes, bytes] | None,
        attempt: int,
    ) -> bool:
        """Run the receivers for one entry; True if it is to be acknowledged."""
        data = (fields or {}).get(b"e", b"")
        try:
            envelope = self._codec.decode(data)._replace(
                stream_id=entry_id, replayed=b"replayed" in (fields or {})
            )
        except DecodingError as exc:
            # Never handled by anyone: straight to dead letters, with the reason.
            self._errors[(stream, entry_id)] = f"not a valid event: {exc}"
            self._stats.add("invalid")
            self._dead_letter(stream, streams[stream].dead, entry_id, fields, attempt)
            return False
        try:
            self._handle(stream, envelope, entry_id, attempt)
        except ValidationError as exc:  # no try will make it fit: dead letters at once
            self._errors[(stream, entry_id)] = str(exc)
            self._stats.add("invalid")
            self._dead_letter(stream, streams[stream].dead, entry_id, fields, attempt)
            return False
        except Exception as exc:
            self._errors[(stream, entry_id)] = f"{type(exc).__name__}: {exc}"
            if len(self._errors) > _MAX_ERRORS:  # failures another process took over
                del self._errors[next(iter(self._errors))]
            self._stats.add("group_failures")
            self._log.warning(
                f"group-failure:{self.group.name}",
                "group %r: event %s of %r failed on attempt %d of %d: %r",
                self.group.name,
                envelope.id,
                envelope.channel,
                attempt,
                self.group.max_attempts,
                exc,
                exc_info=True,
            )
            return False
        return True

    def _dead_letter(
        self,
        stream: bytes,
        dead: bytes,
        entry_id: str,
        fields: dict[bytes, bytes] | None,
        attempts: int,
    ) -> None:
        error = self._errors.pop(
            (stream, entry_id),
            f"delivered {attempts} times, never acknowledged (the process handling it died?)",
        )
        pipeline = self._client.pipeline(transaction=True)
        pipeline.xadd(
            dead,
            {
                "e": (fields or {}).get(b"e", b""),
                "entry": entry_id,
                "group": self.group.name,
                "error": error,
                "attempts": attempts,
                "consumer": self._consumer,
                "failed_at": f"{time.time():.3f}",
            },
        )
        pipeline.xack(stream, self.group.name, entry_id)
        pipeline.execute()
        self._stats.add("dead_lettered")
        self._log.warning(
            f"dead-letter:{self.group.name}",
            "group %r: entry %s of %r moved to dead letters after %d attempts: %s",
            self.group.name,
            entry_id,
            stream.decode(errors="replace"),
            attempts,
            error,
        )


class DeadLetter(NamedTuple):
    """An event a group gave up on, as kept in its dead-letter stream."""

    id: str
    """Its entry id in the dead-letter stream."""
    event: Event
    """The event; ``event.stream_id`` is where the signal's stream held it."""
    error: str
    attempts: int
    failed_at: float
    consumer: str
    """The process (``host:pid:bus``) that gave up on it."""


def dead_letters(
    client: redis.Redis, codec: Codec, channel: str, dead: bytes, own_token: bytes
) -> Iterator[DeadLetter]:
    """The dead letters kept in stream ``dead``, oldest first."""
    for envelope, fields in decoded(codec, channel, entries(client, dead, "-")):
        original = fields.get(b"entry", b"").decode()
        yield DeadLetter(
            envelope.stream_id or "",
            envelope._replace(stream_id=original).event(own_token, kept=True),
            fields.get(b"error", b"").decode(errors="replace"),
            int(fields.get(b"attempts", b"0") or 0),
            float(fields.get(b"failed_at", b"0") or 0),
            fields.get(b"consumer", b"").decode(errors="replace"),
        )


def requeue(client: redis.Redis, dead: bytes, retry: bytes, ids: Collection[str] | None) -> int:
    """Give the dead letters ``ids`` (default: all) to their group again; how many."""
    moved = 0
    for entry_id, fields in list(entries(client, dead, "-")):
        if ids is not None and entry_id not in ids:
            continue
        pipeline = client.pipeline(transaction=True)
        pipeline.xadd(retry, {b"e": fields.get(b"e", b"")})
        pipeline.xdel(dead, entry_id)
        pipeline.execute()
        moved += 1
    return moved


class Member(NamedTuple):
    """A process of a group, as Redis knows it."""

    name: str
    """``host:pid:bus`` of the process."""
    pending: int
    """Events it took and has not acknowledged."""
    idle: float
    """Seconds since it last read or claimed."""


class GroupStatus(NamedTuple):
    """Where a group stands on one signal."""

    name: str
    members: list[Member]
    pending: int
    """Events delivered to a member and not acknowledged yet."""
    lag: int | None
    """Events kept that the group has not been given yet (None: Redis cannot tell)."""
    last_delivered: str
    dead_letters: int


def check_group(found: list[GroupStatus], channel: str, group: str, outcome: str) -> None:
    """Raise ArgumentError, naming the groups ``found`` reading ``channel`` and
    ``outcome`` (what was not done), unless ``group`` is one of them: a name no group
    has (a typo) must not pass for a group with nothing to show."""
    names = [status.name for status in found]
    if group not in names:
        raise ArgumentError(
            f"signal {channel!r}: no group {group!r} reads it (groups: "
            f"{', '.join(names) or 'none'}); {outcome}"
        )


def status(client: redis.Redis, prefix: str, channel: str, stream: bytes) -> list[GroupStatus]:
    """The groups reading ``stream`` (the history of ``channel``), by name."""
    found = []
    for group in _groups_of(client, stream):
        name = group["name"].decode()
        retried = {
            g["name"].decode(): int(g["pending"])
            for g in _groups_of(client, retry_key(prefix, channel, name))
        }
        found.append(
            GroupStatus(
                name,
                [
                    Member(m["name"].decode(), int(m["pending"]), int(m["idle"]) / 1000)
                    for m in client.xinfo_consumers(stream, name)
                ],
                int(group["pending"]) + retried.get(name, 0),
                None if group.get("lag") is None else int(group["lag"]),
                group["last-delivered-id"].decode(),
                int(client.xlen(dead_letter_key(prefix, channel, name))),
            )
        )
    return sorted(found)


def _groups_of(client: redis.Redis, stream: bytes) -> list[dict[str, Any]]:
    try:
        return client.xinfo_groups(stream)
    except redis.ResponseError as exc:
        if "no such key" in str(exc):
            return []
        raise


ConsumerFactory = Callable[[Group, Callable[[], Streams], Handler], GroupConsumer]
"""Makes a group's consumer with this process's connections (the bus's, for one life)."""


class Membership:
    """This process's part in groups, for one bus: which signals each group reads here,
    a consumer per group, and what a group's event does here (its receivers run).

    The groups and their signals outlive a fork; the consumers belong to one process,
    and :meth:`start_process_life` gives the new one its own.
    """

    def __init__(
        self,
        prefix: str,
        context: Callable[[Any], AbstractContextManager[object]] | None,
    ) -> None:
        self._prefix = prefix
        self._context = context
        self._groups: dict[str, Group] = {}
        # group -> stream -> signals; replaced, never mutated, so consumers read it
        # without a lock.
        self._signals: dict[str, dict[bytes, tuple[Signal, ...]]] = {}

    def start_process_life(self, token: bytes, make_consumer: ConsumerFactory) -> None:
        """This process's identity and connections; consumers made from now on use them."""
        self._lock = threading.Lock()
        self._token = token
        self._make_consumer = make_consumer
        self._consumers: dict[str, GroupConsumer] = {}

    def join(self, signal: Signal, group: Group, stream: bytes, timeout: float) -> None:
        """Let this process handle ``group``'s share of ``signal``'s events, kept in
        ``stream``, and of those given to the group again; waits up to ``timeout`` for
        the group to be made. A group of that name set up otherwise here is refused."""
        known = self._groups.get(group.name)
        if known is not None and known != group:
            raise ConfigurationError(
                f"group {group.name!r} is already set up in this process as {known}; "
                "give every receiver of a group the same options"
            )
        streams = (stream, retry_key(self._prefix, signal.channel, group.name))
        with self._lock:
            self._groups[group.name] = group
            by_stream = dict(self._signals.get(group.name, {}))
            for key in streams:
                if signal not in by_stream.get(key, ()):
                    by_stream[key] = (*by_stream.get(key, ()), signal)
            self._signals = {**self._signals, group.name: by_stream}
        consumer = self._consumer(group)
        route = Route(signal.channel, dead_letter_key(self._prefix, signal.channel, group.name))
        consumer.prepare(dict.fromkeys(streams, route), timeout)
        consumer.start()

    def start(self) -> None:
        """Start a consumer for every group joined (in a process just forked)."""
        for group in list(self._groups.values()):
            self._consumer(group).start()

    def join_consumers(self, deadline: float) -> None:
        """Wait, until ``deadline`` (a ``time.monotonic()``), for the consumers to stop."""
        for consumer in list(self._consumers.values()):
            consumer.join(max(0.0, deadline - time.monotonic()))

    def _consumer(self, group: Group) -> GroupConsumer:
        with self._lock:
            consumer = self._consumers.get(group.name)
            if consumer is None:
                consumer = self._consumers[group.name] = self._make_consumer(
                    group,
                    functools.partial(self._streams, group.name),
                    functools.partial(self._handle, group.name),
                )
            return consumer

    def _streams(self, name: str) -> Streams:
        """The streams ``name`` reads in this process, each with its channel and its
        dead-letter stream."""
        return {
            stream: Route(
                signals[0].channel, dead_letter_key(self._prefix, signals[0].channel, name)
            )
            for stream, signals in self._signals.get(name, {}).items()
            if any(signal.has_group_receivers(name) for signal in signals)
        }

    def _handle(
        self, name: str, stream: bytes, envelope: Envelope, entry_id: str, attempt: int
    ) -> None:
        """Run ``name``'s receivers for one event; what they raise is the event's failure.

        A muted signal runs none, as for broadcast receivers: the event counts as
        handled, acknowledged rather than tried again until it goes to dead letters.
        """
        signals = self._signals.get(name, {}).get(stream, ())
        event = envelope._replace(stream_id=entry_id).event(
            self._token, group=name, attempt=attempt
        )
        token = _current.set(event)
        try:
            context = self._context
            with contextlib.nullcontext() if context is None else context(envelope.sender):
                for signal in signals:
                    if signal.channel == envelope.channel and not signal.is_muted:
                        kwargs = envelope.kwargs
                        if signal.schema is not None:
                            kwargs = validated(signal.schema, signal.channel, kwargs)
                        for receiver in signal.group_receivers_for(
                            name, envelope.sender, replayed=envelope.replayed
                        ):
                            call(receiver, envelope.sender, kwargs)
        finally:
            _current.reset(token)
