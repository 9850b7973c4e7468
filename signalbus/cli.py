"""The ``signalbus`` command, for operators::

    signalbus ping                              does the Redis server answer?
    signalbus tail [PATTERN] [--json]           print the live events, one line each
    signalbus send CHANNEL [--sender S] K=V...  emit one event by hand

Every command takes ``--url`` (default ``$SIGNALBUS_URL``, else
``redis://localhost:6379/0``) and ``--prefix`` (the bus's channel prefix), before or
after the command's name. Exit codes: 0 done, 1 Redis unreachable or refused, 2 bad
usage. ``tail`` is a read-only observer on a plain redis-py connection: it needs no
bus, and decodes with the same codec receivers use, so what it calls skipped is what
receivers skip.

click and rich are imported here only; ``import signalbus`` never imports this module.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
import math
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
import redis
from redis.client import PubSub
from rich.console import Console
from rich.text import Text

from .bus import DEFAULT_URL, Bus, _redacted
from .codec import Codec, Envelope
from .errors import ConfigurationError, DecodingError, EncodingError, PublishError, SignalBusError
from .signals import Namespace

__all__ = ["cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])

CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a TCP connection, unless the URL sets ``socket_connect_timeout``."""

MAX_MESSAGE_SIZE = 1 << 20
"""What ``tail`` accepts: the bus's default ``max_message_size``."""

RESERVED_KEYS = frozenset({"_async_wrapper"})
"""Keyword names ``Signal.send()`` keeps for itself."""


# -- options every command takes ---------------------------------------------------------


@dataclasses.dataclass
class Settings:
    url: str = DEFAULT_URL
    prefix: str = ""


def _shown(url: str) -> str:
    """``url`` fit for a message: without its password."""
    try:
        return _redacted(url)
    except ValueError:
        return "<a malformed URL>"


def _set(field: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value is None:
            return
        if field == "url":
            try:
                redis.Redis.from_url(value).close()
            except ValueError as exc:
                raise click.BadParameter(
                    f"not a Redis URL: {exc}; expected e.g. {DEFAULT_URL}", ctx, param
                ) from None
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


def _clock(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%H:%M:%S.%f")[:-3]


def _with_kwargs(line: Text, kwargs: dict[str, Any]) -> Text:
    """``line`` followed by ``key=repr(value)`` for each argument."""
    for position, (key, value) in enumerate(kwargs.items()):
        line.append("  " if position == 0 else " ")
        line.append(f"{key}=", style="dim")
        line.append(repr(value))
    return line


def _event_line(envelope: Envelope) -> Text:
    line = Text.assemble(
        (_clock(envelope.timestamp), "dim"),
        "  ",
        (envelope.channel, "bold cyan"),
        "  ",
        ("sender=", "dim"),
        (repr(envelope.sender), "green"),
        "  ",
        ("origin=", "dim"),
        (envelope.origin, "magenta"),
    )
    return _with_kwargs(line, envelope.kwargs)


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


def _event_json(envelope: Envelope) -> str:
    return json.dumps(
        {
            "id": envelope.id,
            "channel": envelope.channel,
            "sender": _jsonable(envelope.sender),
            "kwargs": _jsonable(envelope.kwargs),
            "timestamp": envelope.timestamp,
            "time": datetime.datetime.fromtimestamp(envelope.timestamp, datetime.UTC).isoformat(),
            "origin": envelope.origin,
        },
        ensure_ascii=False,
    )


def _failure(url: str, exc: BaseException) -> click.ClickException:
    """One line for a server that cannot be reached or refused (exit code 1)."""
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return click.ClickException(f"cannot reach {_shown(url)}: {exc}")
    return click.ClickException(f"Redis at {_shown(url)} refused: {exc}")


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, protocol=2, socket_connect_timeout=CONNECT_TIMEOUT)


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
    client = _client(settings.url)
    try:
        info = client.info("server")
    except redis.RedisError as exc:
        raise _failure(settings.url, exc) from None
    finally:
        client.close()
    _console().print(f"{_shown(settings.url)}: Redis {info.get('redis_version', '?')} answers")


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


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
        # The reader went away (`| head`): stop, exit 0, and keep the final flush quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
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
        full_pattern = _glob_escape(self.prefix) + pattern
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


def _parse_values(values: Sequence[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for item in values:
        key, equals, text = item.partition("=")
        if not equals or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="KEY=VALUE")
        if key in kwargs:
            raise click.BadParameter(f"{key!r} is given twice", param_hint="KEY=VALUE")
        if key in RESERVED_KEYS:
            raise click.BadParameter(f"{key!r} is reserved by send()", param_hint="KEY=VALUE")
        try:
            kwargs[key] = json.loads(text)
        except ValueError:
            kwargs[key] = text
    return kwargs


@cli.command(no_args_is_help=True)
@click.argument("channel")
@click.argument("values", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--sender", default=None, help="The sender, as a string (default: none).")
@_connection_options()
@click.pass_obj
def send(settings: Settings, channel: str, values: tuple[str, ...], sender: str | None) -> None:
    """Send one event on CHANNEL (namespace.signal) to every process listening.

    Each VALUE is read as JSON when it is JSON (42, 1.5, true, null, "42", [1, 2],
    {"a": 1}), else taken as a string. Returns once Redis has the event.
    """
    namespace, dot, name = channel.rpartition(".")
    if not (dot and namespace and name):
        raise click.BadParameter(
            f"{channel!r} is not <namespace>.<signal>, e.g. auth.logged-in",
            param_hint="CHANNEL",
        )
    kwargs = _parse_values(values)
    bus = Bus(settings.url, prefix=settings.prefix, synchronous=True)
    try:
        Namespace(namespace, bus=bus).signal(name).send(sender, **kwargs)
    except PublishError as exc:
        cause = _root_cause(exc)
        if isinstance(cause, redis.RedisError):
            raise _failure(settings.url, cause) from None
        raise click.ClickException(str(exc)) from None
    except (EncodingError, ConfigurationError) as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        bus.close()
    line = Text.assemble(
        "sent ", (channel, "bold cyan"), "  ", ("sender=", "dim"), (repr(sender), "green")
    )
    _console().print(_with_kwargs(line, kwargs))


def _root_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, SignalBusError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


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
