"""The ``signalbus`` command, for operators::

    signalbus ping                              does the Redis server answer?
    signalbus ls [--json]                       the signals: doc, schema, listeners, history
    signalbus schema CHANNEL                    a signal's JSON Schema
    signalbus tail [PATTERN] [--json]           print the live events, one line each
    signalbus send CHANNEL [--sender S] K=V...  emit one event by hand
    signalbus history CHANNEL [--since T] ...   print the events a signal kept, oldest first
    signalbus replay CHANNEL --since T ...      publish kept events again (try --dry-run);
                                                with --group G, to that group alone
    signalbus groups CHANNEL [--json]           the groups reading a signal, and their members
    signalbus dead-letters CHANNEL --group G    the events a group gave up on (--requeue
                                                gives them back to it)

Every command takes ``--url`` (default ``$SIGNALBUS_URL``, else
``redis://localhost:6379/0``) and ``--prefix`` (the bus's channel prefix), before or
after the command's name. Exit codes: 0 done, 1 Redis unreachable or refused, 2 bad
usage. ``tail`` is a read-only observer on a plain redis-py connection: it needs no
bus, and decodes with the same codec receivers use, so what it calls skipped is what
receivers skip. ``ls`` and ``schema`` read the catalog (see :mod:`signalbus.catalog`),
and ``send`` checks its values against the JSON Schema recorded there.
``send``, ``history``, ``replay``, ``groups`` and ``dead-letters`` go through a ``Bus``,
as applications do, but one that leaves the catalog alone: naming a channel on the
command line defines nothing.

click and rich are imported here only; ``import signalbus`` never imports this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import decimal
import functools
import json
import math
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

import click
import redis
from redis.client import PubSub
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from .bus import DEFAULT_URL, Bus
from .catalog import Definition, Listing, listing
from .codec import Codec, Envelope
from .errors import (
    ArgumentError,
    ConfigurationError,
    DecodingError,
    EncodingError,
    SignalBusError,
    TransportError,
)
from .event import Event
from .groups import DeadLetter, GroupStatus, check_group
from .history import ENTRY_ID, TimeBound
from .json_schema import JsonSchema
from .keyspace import catalog_key, channel_pattern
from .replay import ReplayReport
from .signals import Namespace, Signal, split_channel
from .transport import client_from_url, redacted

__all__ = ["cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])

CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a TCP connection, unless the URL sets ``socket_connect_timeout``."""

MAX_MESSAGE_SIZE = 1 << 20
"""What ``tail`` accepts: the bus's default ``max_message_size``."""

RESERVED_KEYS = {
    "sender": "receivers take the sender as their first argument; give it with --sender",
    "_async_wrapper": "blinker's send() keeps it for itself",
    "_sync_wrapper": "blinker's send_async() keeps it for itself",
}
"""Keyword names an event must not carry, and why: blinker calls each receiver as
``receiver(sender, **kwargs)``, so a ``sender`` argument makes every receiver raise a
TypeError; the two wrappers are taken by ``send()`` or ``send_async()`` as their own
arguments, so an event with one could not be sent again by the other."""


# -- options every command takes ---------------------------------------------------------


@dataclasses.dataclass
class Settings:
    url: str = DEFAULT_URL
    prefix: str = ""


def _shown(url: str) -> str:
    """``url`` fit for a message: without its password."""
    try:
        return redacted(url)
    except ValueError:
        return "<a malformed URL>"


def _set(field: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value is None:
            return
        if field == "url":
            _client(value).close()
        setattr(ctx.ensure_object(Settings), field, value)

    return store


def _connection_options(*, top: bool = False) -> Callable[[F], F]:
    """``--url`` and ``--prefix``: on the group with their defaults, on each command
    (default: what the group got) so they may follow the command's name too."""

    def decorate(function: F) -> F:
        function = click.option(
            "--prefix",
            default="" if top else None,
            callback=_set("prefix"),
            expose_value=False,
            metavar="PREFIX",
            help="The bus's channel prefix." if top else "Same as signalbus --prefix.",
        )(function)
        function = click.option(
            "--url",
            envvar="SIGNALBUS_URL" if top else None,
            show_envvar=top,
            default=DEFAULT_URL if top else None,
            show_default=top,
            callback=_set("url"),
            expose_value=False,
            metavar="URL",
            help="The Redis server (any redis-py URL)." if top else "Same as signalbus --url.",
        )(function)
        return function

    return decorate


# -- output ------------------------------------------------------------------------------


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # Not rich's exit(1): the command decides what a reader going away means.
        raise BrokenPipeError


def _console(*, stderr: bool = False) -> Console:
    # Values are shown as they are: no markup, emoji codes or highlighting read into them,
    # and a long event stays on one line.
    return _Console(stderr=stderr, markup=False, emoji=False, highlight=False, soft_wrap=True)


_Shown = Envelope | Event
"""What ``tail`` (a decoded envelope) and ``history`` (an event read back) print."""


def _clock(timestamp: float, *, dated: bool = False) -> str:
    shape = "%Y-%m-%d %H:%M:%S.%f" if dated else "%H:%M:%S.%f"
    return datetime.datetime.fromtimestamp(timestamp).strftime(shape)[:-3]


def _with_kwargs(line: Text, kwargs: Mapping[str, Any] | None) -> Text:
    """``line`` followed by ``key=repr(value)`` for each argument."""
    for position, (key, value) in enumerate((kwargs or {}).items()):
        line.append("  " if position == 0 else " ")
        line.append(f"{key}=", style="dim")
        line.append(repr(value))
    return line


def _event_line(event: _Shown, *, with_stream_id: bool = False) -> Text:
    """Time, channel, sender, origin, a replay mark and arguments; first the entry id,
    if asked."""
    line = Text.assemble(
        (f"{event.stream_id}  " if with_stream_id else "", "dim"),
        (_clock(event.timestamp), "dim"),
        "  ",
        (event.channel, "bold cyan"),
        "  ",
        ("sender=", "dim"),
        (repr(event.sender), "green"),
        "  ",
        ("origin=", "dim"),
        (event.origin, "magenta"),
    )
    if event.replayed:
        line.append("  replayed", style="bold yellow")
    return _with_kwargs(line, event.kwargs)


def _jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it: dates and times in ISO format, UUIDs and decimals
    as strings, sets as lists, anything else JSON has no type for as its ``repr``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {
            key if isinstance(key, str) else repr(key): _jsonable(item)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, decimal.Decimal)):
        return str(value)
    return repr(value)


def _iso(timestamp: float) -> str:
    """``timestamp`` (seconds since the epoch) in ISO 8601, UTC."""
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat()


def _event_fields(event: _Shown, *, with_stream_id: bool = False) -> dict[str, Any]:
    fields = {
        "id": event.id,
        "channel": event.channel,
        "sender": _jsonable(event.sender),
        "kwargs": _jsonable(dict(event.kwargs or {})),
        "timestamp": event.timestamp,
        "time": _iso(event.timestamp),
        "origin": event.origin,
        "replayed": event.replayed,
    }
    if with_stream_id:
        fields["stream_id"] = event.stream_id
    return fields


def _json(fields: Mapping[str, Any]) -> str:
    return json.dumps(fields, ensure_ascii=False)


def _event_json(event: _Shown, *, with_stream_id: bool = False) -> str:
    return _json(_event_fields(event, with_stream_id=with_stream_id))


def _labelled(line: Text, fields: Mapping[str, str | Text]) -> Text:
    """``line`` followed by ``  label=value`` for each field."""
    for label, value in fields.items():
        line.append("  ")
        line.append(f"{label}=", style="dim")
        line.append(value)
    return line


def _counted(count: int, noun: str, plural: str | None = None) -> str:
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def _quiet_stdout() -> None:
    """After the reader went away (``| head``): send the rest of stdout, and the final
    flush, nowhere, so the command can stop and exit 0 without a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


@contextlib.contextmanager
def _until_the_reader_leaves() -> Iterator[None]:
    """Run the block, which prints to stdout; if the reader goes away, stop it there,
    quietly (the rest of the block, a summary on stderr say, is not run)."""
    try:
        yield
    except BrokenPipeError:
        _quiet_stdout()


def _failure(url: str, exc: BaseException) -> click.ClickException:
    """One line for a server that cannot be reached or refused (exit code 1)."""
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return click.ClickException(f"cannot reach {_shown(url)}: {exc}")
    return click.ClickException(f"Redis at {_shown(url)} refused: {exc}")


class _BadSetting(click.ClickException):
    """A bad URL, in one line (a usage error's exit code, without its usage lines)."""

    exit_code = 2


def _client(url: str) -> redis.Redis:
    try:
        return client_from_url(url, socket_connect_timeout=CONNECT_TIMEOUT)
    except ConfigurationError as exc:
        raise _BadSetting(str(exc)) from None


@contextlib.contextmanager
def _redis(url: str) -> Iterator[redis.Redis]:
    """A client on ``url``, closed on the way out; what Redis raises exits 1."""
    client = _client(url)
    try:
        yield client
    except redis.RedisError as exc:
        raise _failure(url, exc) from None
    finally:
        client.close()


# -- the commands --------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="redis-signalbus", prog_name="signalbus")
@_connection_options(top=True)
def cli() -> None:
    """Look at a signalbus bus and act on it.

    Exit codes: 0 done, 1 Redis unreachable or refused, 2 bad usage.
    """


@cli.command()
@_connection_options()
@click.pass_obj
def ping(settings: Settings) -> None:
    """Check that the Redis server answers."""
    with _redis(settings.url) as client:
        info = client.info("server")
    _console().print(f"{_shown(settings.url)}: Redis {info.get('redis_version', '?')} answers")


@cli.command("ls")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per signal and line.")
@_connection_options()
@click.pass_obj
def list_signals(settings: Settings, as_json: bool) -> None:
    """List the signals defined on this Redis, as the buses that carry them recorded
    them, with what Redis knows of each now.

    For each signal: its schema's name, the processes subscribed to it now, the
    events its history keeps, the groups reading it, and the first line of its doc.
    A signal with history but no record (its definers predate the catalog, or record
    none) is listed too. With --json, one object per signal and line, with the record
    (JSON Schema included) under "definition".
    """
    with _redis(settings.url) as client:
        found = listing(client, settings.prefix)
    if not found:
        _note(_console(stderr=True), "no signals recorded or kept here")
    out = _console()
    with _until_the_reader_leaves():
        for entry in found:
            if as_json:
                click.echo(_json(dataclasses.asdict(entry)))
            else:
                out.print(_listing_line(entry))


def _listing_line(entry: Listing) -> Text:
    """The channel and its figures; the first line of its doc below, indented."""
    found = entry.definition
    line = _labelled(
        Text(found.channel, style="bold cyan"),
        {
            "schema": found.schema_name or "-",
            "subscribers": str(entry.subscribers),
            "history": str(entry.history_length),
            "groups": ",".join(entry.groups) or "-",
        },
    )
    doc = (found.doc or "").strip().splitlines()
    if doc:
        line.append(f"\n  {doc[0]}", style="dim")
    return line


def _recorded(client: redis.Redis, prefix: str, channel: str) -> Definition | None:
    """CHANNEL as the catalog records it; None if no bus recorded it."""
    text = client.hget(catalog_key(prefix), channel)
    return None if text is None else Definition.from_json(channel, cast(bytes, text))


@cli.command(no_args_is_help=True)
@click.argument("channel")
@_connection_options()
@click.pass_obj
def schema(settings: Settings, channel: str) -> None:
    """Print the JSON Schema of CHANNEL (namespace.signal), as recorded in the catalog."""
    with _redis(settings.url) as client:
        found = _recorded(client, settings.prefix, channel)
    if found is None:
        raise click.BadParameter(
            f"no signal {channel!r} in the catalog (signalbus ls lists them)",
            param_hint="CHANNEL",
        )
    if found.schema is None:
        raise click.BadParameter(f"signal {channel!r} has no schema", param_hint="CHANNEL")
    click.echo(json.dumps(found.schema, indent=2, ensure_ascii=False))


@cli.command()
@click.argument("pattern", default="*")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event and line.")
@click.option(
    "--count", type=click.IntRange(min=1), default=None, help="Exit after this many events."
)
@_connection_options()
@click.pass_obj
def tail(settings: Settings, pattern: str, as_json: bool, count: int | None) -> None:
    """Print the events sent on channels matching PATTERN (a Redis glob, default *).

    One line per event: time, channel, sender, origin and arguments; with --json,
    one object per line with id, channel, sender, kwargs, timestamp, time (ISO, UTC)
    and origin. Messages that are not valid events are shown as skipped (on stderr
    with --json) and never stop it. Runs until Ctrl-C, or --count events.
    """
    tailer = _Tail(settings, as_json)
    try:
        tailer.run(pattern, count)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        _quiet_stdout()
    finally:
        tailer.close()


class _Tail:
    """A PSUBSCRIBE connection and what ``tail`` prints from it."""

    def __init__(self, settings: Settings, as_json: bool) -> None:
        self.url = settings.url
        self.prefix = settings.prefix
        self.as_json = as_json
        self.out = _console()
        self.status = _console(stderr=True)
        self.codec = Codec(max_message_size=MAX_MESSAGE_SIZE)
        self.client = _client(settings.url)
        self.pubsub: PubSub = self.client.pubsub()  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()

    def run(self, pattern: str, count: int | None) -> None:
        full_pattern = channel_pattern(self.prefix, pattern)
        try:
            self.pubsub.psubscribe(full_pattern)
        except redis.RedisError as exc:
            raise _failure(self.url, exc) from None
        shown = 0
        backoff = 0.0
        greeting = f"tailing {full_pattern!r} on {_shown(self.url)} (Ctrl-C to stop)"
        while count is None or shown < count:
            try:
                message = self.pubsub.get_message(timeout=1.0)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # Redis went away: say so once per outage, retry with backoff. Events
                # sent meanwhile are lost to this observer, as to every pub/sub client.
                if not backoff:
                    self.note(f"lost {_shown(self.url)} ({exc}); reconnecting")
                    greeting = f"reconnected; tailing {full_pattern!r} again"
                backoff = min(max(backoff * 2, 0.1), 2.0)
                time.sleep(backoff)
                continue
            if message is None:
                continue
            backoff = 0.0
            if message["type"] == "psubscribe":
                self.note(greeting)
            elif message["type"] == "pmessage":
                shown += self.show(message["channel"], message["data"])

    def note(self, text: str) -> None:
        self.status.print(Text(text, style="dim"))

    def show(self, channel_key: bytes, data: bytes) -> int:
        """Print one message; 1 if it was an event, 0 if it was skipped."""
        channel = channel_key.decode(errors="replace").removeprefix(self.prefix)
        try:
            envelope = self.codec.decode(data)
        except DecodingError as exc:  # the only error decode() raises, whatever the bytes
            return self.skip(channel, str(exc))
        if envelope.channel != channel:
            return self.skip(channel, f"the event names channel {envelope.channel!r}")
        if self.as_json:
            click.echo(_event_json(envelope))
        else:
            self.out.print(_event_line(envelope))
        return 1

    def skip(self, channel: str, reason: str) -> int:
        line = Text.assemble((_clock(time.time()), "dim"), "  ", (channel, "dim cyan"))
        line.append(f"  skipped: {reason}", style="dim")
        (self.status if self.as_json else self.out).print(line)
        return 0


def _texts(values: Sequence[str]) -> dict[str, str]:
    """Each KEY=VALUE as its key and text; what no receiver could take is refused (exit
    2) before Redis is asked anything."""
    texts: dict[str, str] = {}
    for item in values:
        key, equals, text = item.partition("=")
        if not equals or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="KEY=VALUE")
        if key in texts:
            raise click.BadParameter(f"{key!r} is given twice", param_hint="KEY=VALUE")
        if key in RESERVED_KEYS:
            raise click.BadParameter(
                f"{key!r} is reserved: {RESERVED_KEYS[key]}", param_hint="KEY=VALUE"
            )
        texts[key] = text
    return texts


def _value(text: str, fits: Callable[[Any], bool]) -> Any:
    """``text`` read as JSON when it is JSON, else as it is; and as it is where the
    field's schema takes the text but not what JSON reads (``note=42`` for a string)."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return text if not fits(value) and fits(text) else value


def _catalog_record(settings: Settings, channel: str) -> Definition:
    """CHANNEL's record in the catalog, whose schema the values must fit; a bare one
    where there is none, or where Redis refuses to let this user read the catalog (a
    user may be allowed to publish and no more): then the values go unchecked, and
    stderr says so."""
    with _redis(settings.url) as client:
        try:
            return _recorded(client, settings.prefix, channel) or Definition(channel)
        except redis.ResponseError as exc:
            _note(
                _console(stderr=True),
                f"the catalog cannot be read ({exc}); the values were not checked against a schema",
            )
            return Definition(channel)


def _arguments(texts: Mapping[str, str], found: Definition) -> dict[str, Any]:
    """The event's arguments, typed and checked by the JSON Schema the catalog holds for
    the channel, if it holds one (receivers would drop what does not fit: exit 2)."""
    schema = JsonSchema(found.schema)
    kwargs = {
        key: _value(text, functools.partial(schema.fits_field, key)) for key, text in texts.items()
    }
    problems = schema.problems(kwargs)
    if problems:
        raise click.BadParameter(
            f"the arguments do not fit {found.schema_name}, the schema of {found.channel} in "
            f"the catalog (signalbus schema {found.channel} prints it): {'; '.join(problems)}",
            param_hint="KEY=VALUE",
        )
    return kwargs


def _split_channel(channel: str) -> tuple[str, str]:
    """CHANNEL's namespace and signal name (see :func:`signalbus.signals.split_channel`)."""
    try:
        return split_channel(channel)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), param_hint="CHANNEL") from None


def _root_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, SignalBusError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


@contextlib.contextmanager
def _signal(settings: Settings, channel: str, *, synchronous: bool = False) -> Iterator[Signal]:
    """The signal CHANNEL names, on a bus of its own closed on the way out. What the
    library raises becomes a click error: exit 1 for Redis, 2 for bad usage."""
    namespace, name = _split_channel(channel)
    try:
        with Bus(
            settings.url, prefix=settings.prefix, synchronous=synchronous, catalog=False
        ) as bus:
            yield Namespace(namespace, bus=bus).signal(name)
    except (redis.RedisError, TransportError) as exc:
        cause = _root_cause(exc)
        if isinstance(cause, redis.RedisError):
            raise _failure(settings.url, cause) from None
        raise click.ClickException(str(exc)) from None
    except (ArgumentError, ConfigurationError, EncodingError) as exc:
        raise click.UsageError(str(exc)) from None


@cli.command(no_args_is_help=True)
@click.argument("channel")
@click.argument("values", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--sender", default=None, help="The sender, as a string (default: none).")
@_connection_options()
@click.pass_obj
def send(settings: Settings, channel: str, values: tuple[str, ...], sender: str | None) -> None:
    """Send one event on CHANNEL (namespace.signal) to every process listening.

    Each VALUE is read as JSON when it is JSON (42, 1.5, true, null, "42", [1, 2],
    {"a": 1}), else taken as a string; a field the schema types as a string takes the
    text as it is (note=42 is "42"). Where the catalog holds a JSON Schema for CHANNEL,
    the values are checked against it first (types, required fields, enums, bounds;
    not formats): what does not fit is refused, with exit code 2, and nothing
    is sent. The event is signed with the first key of $SIGNALBUS_SIGNING_KEYS, if
    set, as every bus signs. Returns once Redis has the event.
    """
    texts = _texts(values)
    with _signal(settings, channel, synchronous=True) as signal:
        kwargs = _arguments(texts, _catalog_record(settings, channel))
        signal.send(sender, **kwargs)
    line = Text.assemble(
        "sent ", (channel, "bold cyan"), "  ", ("sender=", "dim"), (repr(sender), "green")
    )
    _console().print(_with_kwargs(line, kwargs))


# -- history and replay ----------------------------------------------------------------------

_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_EPOCH = datetime.datetime.fromtimestamp(0, datetime.UTC)


def _time(text: str) -> TimeBound:
    """A --since or --until: a duration back from now (a timedelta), an ISO 8601 date or
    time (an aware datetime, local unless it says otherwise) or a stream entry id (as is).

    Raises ValueError, which click reports as a bad value for the option (exit 2).
    """
    text = text.strip()
    if ENTRY_ID.fullmatch(text):
        return text
    try:
        duration = _DURATION.fullmatch(text)
        if duration:
            return datetime.timedelta(**{_UNITS[duration[2]]: int(duration[1])})
        moment = datetime.datetime.fromisoformat(text).astimezone()
        return max(moment, _EPOCH)  # no entry is older, and Redis refuses negative ids
    except (ValueError, OverflowError, OSError):
        raise ValueError(
            f"{text!r} is not a time; give a duration back from now (30s, 15m, 2h, 7d), "
            "an ISO 8601 date or time (2026-11-24, 2026-11-24T10:00, local unless it "
            "has an offset) or a stream entry id (1732440000000-0)"
        ) from None


def _window_options(*, since_help: str, since_required: bool = False) -> Callable[[F], F]:
    """--since, --until (both included) and --limit."""

    def decorate(function: F) -> F:
        function = click.option(
            "--limit", type=click.IntRange(min=1), metavar="N", help="Read at most N entries."
        )(function)
        function = click.option(
            "--until", type=_time, metavar="TIME", help="The newest event (default: the last)."
        )(function)
        return click.option(
            "--since", type=_time, required=since_required, metavar="TIME", help=since_help
        )(function)

    return decorate


def _rate(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value} is not a positive number of events/s", ctx, param)
    return value


@dataclasses.dataclass
class _Tally:
    """How many events went by, and the first and the last."""

    events: int = 0
    first: Event | None = None
    last: Event | None = None

    def add(self, event: Event) -> Event:
        self.events += 1
        if self.first is None:
            self.first = event
        self.last = event
        return event

    def summary(self, channel: str) -> str:
        """How many events, from which entry to which; or that there were none."""
        if self.first is None or self.last is None:
            return f"no events kept for {channel} in that range"
        ends = [
            f"{e.stream_id} ({_clock(e.timestamp, dated=True)})" for e in (self.first, self.last)
        ]
        return f"{_counted(self.events, 'event')}, from {ends[0]} to {ends[1]}"


def _note(console: Console, text: str) -> None:
    console.print(Text(text, style="dim"))


TIME_FORMS = (
    "--since and --until are both included. TIME is a duration back from now (30s, 15m, "
    "2h, 7d), an ISO 8601 date or time (2026-11-24, 2026-11-24T10:00, local time unless "
    "it has an offset such as +00:00 or Z), or a stream entry id (1732440000000-0, as "
    "history prints them)."
)


@cli.command(no_args_is_help=True, epilog=TIME_FORMS)
@click.argument("channel")
@_window_options(since_help="The oldest event (default: the first kept).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event and line.")
@_connection_options()
@click.pass_obj
def history(
    settings: Settings,
    channel: str,
    since: TimeBound,
    until: TimeBound,
    limit: int | None,
    as_json: bool,
) -> None:
    """Print the events kept for CHANNEL (namespace.signal), oldest first.

    One line per event: its stream entry id, then what tail prints; with --json, one
    object per line with tail's keys and stream_id. Then, on stderr, how many events
    and from which entry to which.
    """
    out, status = _console(), _console(stderr=True)
    tally = _Tally()
    with _until_the_reader_leaves():
        with _signal(settings, channel) as signal:
            for event in map(tally.add, signal.history(since, until, limit)):
                if as_json:
                    click.echo(_event_json(event, with_stream_id=True))
                else:
                    out.print(_event_line(event, with_stream_id=True))
        _note(status, tally.summary(channel))


@cli.command(no_args_is_help=True, epilog=TIME_FORMS)
@click.argument("channel")
@_window_options(
    since_required=True,
    since_help="The oldest event to replay; 0 for all that is kept.",
)
@click.option("--dry-run", is_flag=True, help="Publish nothing; show what would be replayed.")
@click.option(
    "--rate",
    type=float,
    callback=_rate,
    metavar="N",
    help="At most N events per second (default: as fast as Redis takes them).",
)
@click.option(
    "--group",
    metavar="NAME",
    help="Replay to this group alone (one of its processes gets each event), not to "
    "every process listening.",
)
@_connection_options()
@click.pass_obj
def replay(
    settings: Settings,
    channel: str,
    since: TimeBound,
    until: TimeBound,
    limit: int | None,
    dry_run: bool,
    rate: float | None,
    group: str | None,
) -> None:
    """Publish the events kept for CHANNEL (namespace.signal) again, oldest first, to
    every process listening now; with --group, to that group alone.

    Receivers get them with current_event().replayed set and their original ids, so
    they can stay idempotent; receivers connected with replays=False never do. Replays
    are not kept in history again. There is no prompt: run with --dry-run first to
    see what would be replayed.
    """
    status = _console(stderr=True)
    with _signal(settings, channel) as signal:
        if group is not None:  # before counting: with nothing kept, a typo still exits 2
            check_group(signal.group_status(), channel, group, "nothing was replayed")
        # Count first, for the progress bar's total: a second read of the stream is
        # cheap next to publishing. The replay then covers exactly the entries counted:
        # a duration does not slide, and events sent meanwhile (which receivers got
        # live) are not replayed too.
        counted = _Tally()
        for event in signal.history(since, until, limit):
            counted.add(event)
        if counted.first is None or counted.last is None:
            _note(status, f"nothing to replay: {counted.summary(channel)}")
            return
        since, until = counted.first.stream_id, counted.last.stream_id
        doing = f"{'reading' if dry_run else 'replaying'} {channel}"
        with _progress_bar(status, doing, counted.events) as advance:
            report = signal.replay(
                since, until, limit=limit, dry_run=dry_run, rate=rate, progress=advance, group=group
            )
    _show_report(report, group)


@contextlib.contextmanager
def _progress_bar(console: Console, doing: str, total: int) -> Iterator[Callable[[Event], None]]:
    """A progress bar on ``console`` while the block runs, if it is a terminal (scripts
    and logs get none); yields what moves it one event on."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task(doing, total=total)
        yield lambda event: progress.advance(task)


def _show_report(report: ReplayReport, group: str | None) -> None:
    """What a replay (into ``group``, if given) did, or would do: counts, then its first
    and last events."""
    out = _console()
    events = _counted(report.events, "event")
    skipped = f"{_counted(report.skipped, 'entry', 'entries')} skipped (not events)"
    where = report.channel if group is None else f"{report.channel} to group {group}"
    if report.dry_run:
        out.print(f"would replay {events} on {where}; {skipped}")
    else:
        # Into a group, the events go to a stream: no processes are counted.
        processes = _counted(report.listeners, "process", "processes")
        reached = f"reached {processes}; " if group is None else ""
        out.print(f"replayed {events} on {where} in {report.seconds:.2f}s; {reached}{skipped}")
    for label, event in (("first", report.first), ("last ", report.last)):
        if event is not None:
            out.print(Text.assemble((label, "bold"), "  ", _event_line(event, with_stream_id=True)))
    if report.dry_run:
        out.print("dry run: nothing was published")


# -- groups and dead letters ---------------------------------------------------------------


@cli.command(no_args_is_help=True)
@click.argument("channel")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per group and line.")
@_connection_options()
@click.pass_obj
def groups(settings: Settings, channel: str, as_json: bool) -> None:
    """Show the groups reading CHANNEL (namespace.signal), whichever process runs them.

    For each group: pending (events given to a member and not acknowledged yet), lag
    (events kept that the group was not given yet; ? when Redis cannot tell), the last
    entry delivered and its dead letters; then one line per member process: its
    pending events and the seconds since it last read. With --json, one object per
    group and line, with those keys and a list of members.
    """
    out = _console()
    with _until_the_reader_leaves(), _signal(settings, channel) as signal:
        found = signal.group_status()
        if not found:
            _note(_console(stderr=True), f"no groups read {channel}")
        for status in found:
            if as_json:
                click.echo(_json(_group_fields(status)))
            else:
                for line in _group_lines(status):
                    out.print(line)


def _group_lines(status: GroupStatus) -> Iterator[Text]:
    """The group, then each of its members, indented."""
    yield _labelled(
        Text(status.name, style="bold cyan"),
        {
            "pending": str(status.pending),
            "lag": "?" if status.lag is None else str(status.lag),
            "last_delivered": status.last_delivered,
            "dead_letters": Text(
                str(status.dead_letters), style="red" if status.dead_letters else ""
            ),
        },
    )
    for member in status.members:
        yield _labelled(
            Text(f"  {member.name}", style="magenta"),
            {"pending": str(member.pending), "idle": f"{member.idle:.1f}s"},
        )
    if not status.members:
        yield Text("  no members", style="dim")


def _group_fields(status: GroupStatus) -> dict[str, Any]:
    return {**status._asdict(), "members": [member._asdict() for member in status.members]}


def _dead_letter_ids(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> frozenset[str]:
    for value in values:
        if not re.fullmatch(r"\d+-\d+", value):
            raise click.BadParameter(
                f"{value!r} is not a dead letter's id, such as 1732440000000-0 (as "
                "dead-letters lists them)",
                ctx,
                param,
            )
    return frozenset(values)


@cli.command("dead-letters", no_args_is_help=True)
@click.argument("channel")
@click.option("--group", required=True, metavar="NAME", help="The group that gave up on them.")
@click.option(
    "--id",
    "ids",
    multiple=True,
    callback=_dead_letter_ids,
    metavar="ID",
    help="Only this dead letter (its id as listed); repeat for more.",
)
@click.option(
    "--requeue",
    is_flag=True,
    help="Give them (all, or the --id ones) back to the group, to be tried again.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per dead letter and line.")
@_connection_options()
@click.pass_obj
def dead_letters(
    settings: Settings,
    channel: str,
    group: str,
    ids: frozenset[str],
    requeue: bool,
    as_json: bool,
) -> None:
    """List the events of CHANNEL (namespace.signal) that a group gave up on, oldest first.

    For each: its dead letter id, the attempts made, when it failed, the process that
    gave up and the last error; then, indented, the event as history prints it. With
    --json, one object per line with id, attempts, error, failed_at (ISO, UTC),
    consumer and event (history's keys). Then, on stderr, how many.

    With --requeue, nothing is listed: the dead letters go back to the group, which
    tries each again (from its first attempt) in one of its processes.
    """
    if requeue and as_json:
        raise click.UsageError("--json lists dead letters; it does not go with --requeue")
    out, status = _console(), _console(stderr=True)
    with _until_the_reader_leaves(), _signal(settings, channel) as signal:
        outcome = "nothing was requeued" if requeue else "nothing was listed"
        check_group(signal.group_status(), channel, group, outcome)
        if requeue:
            moved = signal.requeue(group, ids or None)
            out.print(f"requeued {_counted(moved, 'event')} to group {group}")
            if len(ids) > moved:
                _note(status, f"{_counted(len(ids) - moved, 'id')} matched no dead letter")
            return
        shown = 0
        for letter in signal.dead_letters(group):
            if ids and letter.id not in ids:
                continue  # --id without --requeue: only those are listed
            shown += 1
            if as_json:
                click.echo(_json(_dead_letter_fields(letter)))
            else:
                out.print(_dead_letter_line(letter))
                out.print(Text.assemble("  ", _event_line(letter.event, with_stream_id=True)))
        _note(status, f"{_counted(shown, 'dead letter')} of group {group} on {channel}")


def _dead_letter_line(letter: DeadLetter) -> Text:
    return _labelled(
        Text(letter.id, style="bold"),
        {
            "attempts": str(letter.attempts),
            "failed": _clock(letter.failed_at, dated=True),
            "consumer": Text(letter.consumer, style="magenta"),
            "error": Text(repr(letter.error), style="red"),
        },
    )


def _dead_letter_fields(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "attempts": letter.attempts,
        "error": letter.error,
        "failed_at": _iso(letter.failed_at),
        "consumer": letter.consumer,
        "event": _event_fields(letter.event, with_stream_id=True),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default: the process's arguments); the exit code."""
    try:
        result = cli.main(
            args=None if argv is None else list(argv), prog_name="signalbus", standalone_mode=False
        )
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("Aborted.", err=True)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
