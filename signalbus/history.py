"""History: each signal's events kept in a Redis Stream, for reading back.

An event of a signal with history is appended to the signal's stream and published
in one server-side script, in the same round trip: the script adds the entry and
publishes the event with the entry id as a ninth envelope field, so a receiver knows
where each event stands in the stream. Retention is bounded by count and by age
(both approximate: Redis trims whole stream nodes, the cheap way), set per ``Bus``,
per ``Namespace`` and per ``signal(...)``; ``history=False`` turns it off.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple, cast

import redis

from .codec import Codec, Envelope
from .errors import ArgumentError, ConfigurationError, DecodingError
from .event import Event
from .keyspace import stream_key
from .stats import logger

if TYPE_CHECKING:
    from .signals import Signal

__all__ = ["History", "HistoryOption"]


@dataclasses.dataclass(frozen=True)
class History:
    """How much of a signal's past is kept: at most ``max_count`` events, none older
    than ``max_age`` (``None``: no age limit). The defaults suit a small deployment:
    a week, or 10,000 events per signal, whichever is less."""

    max_count: int = 10_000
    max_age: datetime.timedelta | None = datetime.timedelta(days=7)

    def __post_init__(self) -> None:
        if not isinstance(self.max_count, int) or self.max_count < 1:
            raise ConfigurationError(f"max_count must be a positive int, not {self.max_count!r}")
        if self.max_age is not None and (
            not isinstance(self.max_age, datetime.timedelta) or self.max_age.total_seconds() <= 0
        ):
            raise ConfigurationError(
                f"max_age must be a positive timedelta or None, not {self.max_age!r}"
            )


HistoryOption = History | bool | None
"""``History(...)`` to keep events, ``True`` for the defaults, ``False`` for none,
``None`` to take what the namespace, then the bus, says."""


def resolve(*options: HistoryOption) -> History | None:
    """The first option that says something, from the most specific on."""
    for option in options:
        if option is None:
            continue
        if isinstance(option, History):
            return option
        if isinstance(option, bool):
            return History() if option else None
        raise ConfigurationError(
            f"history must be a signalbus.History, True, False or None, not {option!r}"
        )
    return History()


class Keep(NamedTuple):
    """Where and how long one channel's events are kept, as the publish script wants it."""

    stream_key: bytes
    max_count: bytes
    max_age_ms: int | None

    @property
    def max_age_arg(self) -> bytes:
        """The age limit as the publish script takes it, in ms ("0": none). The script
        finds the oldest id to keep by the server's clock, which made the ids: a
        sender's clock running ahead must not trim what is still young."""
        return b"0" if self.max_age_ms is None else b"%d" % max(1, self.max_age_ms)


def keep_for(prefix: str, channel: str, history: History | None) -> Keep | None:
    if history is None:
        return None
    age = None if history.max_age is None else int(history.max_age.total_seconds() * 1000)
    return Keep(stream_key(prefix, channel), b"%d" % history.max_count, age)


# The data epoch, made if it is not there from ``random``: the value is that, a colon,
# and the server's time in milliseconds, when the data began. Made by whoever comes
# first: a subscriber, a catch-up, or the first event kept (so no stream can hold an
# entry older than the epoch of the data it belongs to).
_EPOCH = """
local function epoch(key, random)
  local value = redis.call('GET', key)
  if not value then
    local now = redis.call('TIME')
    value = random .. ':' .. now[1] .. string.format('%03d', math.floor(now[2] / 1000))
    redis.call('SET', key, value)
  end
  return value
end
"""

# KEYS[1] is the epoch key, ARGV[1] a random value for it.
EPOCH_SCRIPT = _EPOCH + "return epoch(KEYS[1], ARGV[1])\n"


def epoch_made(epoch: bytes) -> int | None:
    """When the data named by ``epoch`` began: milliseconds by the server's clock."""
    _, colon, milliseconds = epoch.rpartition(b":")
    return int(milliseconds) if colon and milliseconds.isdigit() else None


# KEYS are the streams of the batch. ARGV holds first what the script needs of the
# wire layout (signalbus.wire.script_arguments: the signature's first byte, where the
# array starts after a signature, the array head with the entry id appended); the
# epoch key and a random value for it, should the data have none yet (not in KEYS: a
# user whose ACL lacks it still publishes, as one who may not read it still receives);
# then, per stream in KEYS order, its max count and max age in ms ("0": no age limit;
# the script turns it into the oldest id to keep by the server's clock, which made the
# ids); then, per event, its stream's index (0: not kept), its channel and its
# envelope (signed or not). Errors are returned per event
# (pcall), so one refused event never undoes or stops the others; an event whose
# PUBLISH is refused is taken out of its stream again. Each stream is trimmed once per
# batch, after its events; the reply is {results per event, warnings}.
#
# Trimming respects consumer groups: nothing a group has not been given or not
# acknowledged is trimmed by age, nor by count while every group is less than max_count
# events behind (so a group's last-delivered entry stays, and a member can tell a loss).
# Where Redis cannot tell a group's lag (7.0 reports none after an XDEL past the group's
# position, which this script does for refused events), the entries from what the group
# needs on are counted instead, at most max_count of them: a read of what the group has
# yet to handle, for that group only. A group further behind holds trimming back, up to
# HOLD x max_count entries; past that the stream is trimmed anyway and a warning says
# what was lost.
# A trim that fails is a warning too: it must not pass unnoticed. Every warning starts
# with "<stream key>: ".
PUBLISH_SCRIPT = (
    _EPOCH.encode()
    + b"""
local HOLD = 10

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-?(%d*)$')
  return tonumber(ms), tonumber(seq) or 0
end

local function older(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  if am ~= bm then return am < bm end
  return as < bs
end

local function count_from(key, id, limit)
  return #redis.call('XRANGE', key, id, '+', 'COUNT', limit)
end

local function trim(key, max_count, min_id)
  local groups = redis.call('XINFO', 'GROUPS', key)
  if #groups == 0 then
    redis.call('XTRIM', key, 'MAXLEN', '~', max_count)
    if min_id ~= '0' then redis.call('XTRIM', key, 'MINID', '~', min_id) end
    return nil
  end
  local behind, keep, unacked = 0, nil, {}
  for _, fields in ipairs(groups) do
    local g = {}
    for i = 1, #fields, 2 do g[fields[i]] = fields[i + 1] end
    local need = g['last-delivered-id']
    if g['pending'] > 0 then
      need = redis.call('XPENDING', key, g['name'])[2]
      unacked[#unacked + 1] = {g['name'], need}
    end
    if keep == nil or older(need, keep) then keep = need end
    local lag = g['lag']
    if type(lag) == 'number' then
      lag = lag + g['pending']
    else
      lag = count_from(key, need, max_count)
    end
    behind = math.max(behind, lag)
  end
  local warning = nil
  if behind < max_count then
    redis.call('XTRIM', key, 'MAXLEN', '~', max_count)
  elseif redis.call('XLEN', key) > HOLD * max_count then
    redis.call('XTRIM', key, 'MAXLEN', '~', HOLD * max_count)
    warning = key .. ': trimmed to ' .. (HOLD * max_count) .. ' entries although a group is '
      .. behind .. ' events behind'
  end
  if min_id ~= '0' then
    local threshold = min_id
    if older(keep, min_id) then threshold = keep end
    redis.call('XTRIM', key, 'MINID', '~', threshold)
  end
  local first = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)[1]
  for _, held in ipairs(unacked) do
    if first and older(held[2], first[1]) then
      warning = (warning and warning .. '; ' or key .. ': ') .. 'group ' .. held[1]
        .. ' lost unacknowledged events from ' .. held[2]
    end
  end
  return warning
end

-- The oldest id to keep for an age limit in ms ('0': none), by the server's clock.
local function min_id_for(max_age)
  if max_age == '0' then return '0' end
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  return string.format('%d', math.max(0, ms - tonumber(max_age)))
end

local SIGNATURE, SIGNED_AT, KEPT = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local streams = #KEYS
pcall(epoch, ARGV[4], ARGV[5])  -- before anything is kept in data that has none
local out = {}
for a = 2 * streams + 6, #ARGV, 3 do
  local s, channel, event = tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 2]
  local result
  if s == 0 then
    result = redis.pcall('PUBLISH', channel, event)
  else
    local id = redis.pcall('XADD', KEYS[s], '*', 'e', event)
    result = id
    if type(id) ~= 'table' then
      local at = 1
      if string.byte(event, 1) == SIGNATURE then at = SIGNED_AT end
      local kept = string.sub(event, 1, at - 1) .. string.char(KEPT)
        .. string.sub(event, at + 1) .. cmsgpack.pack(id)
      result = redis.pcall('PUBLISH', channel, kept)
      -- refused (an ACL without the channel): not sent, so not kept either
      if type(result) == 'table' then redis.call('XDEL', KEYS[s], id) end
    end
  end
  out[#out + 1] = result
end
local warnings = {}
for s = 1, streams do
  local ok, warning = pcall(trim, KEYS[s], tonumber(ARGV[2 * s + 4]), min_id_for(ARGV[2 * s + 5]))
  if not ok then warning = KEYS[s] .. ': trimming failed: ' .. tostring(warning) end
  if warning then warnings[#warnings + 1] = warning end
end
return {out, warnings}
"""
)

PUBLISH_SCRIPT_SHA = hashlib.sha1(PUBLISH_SCRIPT).hexdigest().encode()

_PAGE = 500
ENTRY_ID = re.compile(r"\d+(-\d+)?")
TimeBound = datetime.datetime | datetime.timedelta | str | None


def entry_bound(bound: TimeBound, *, channel: str, default: str) -> str:
    """A stream id for ``bound``: a datetime, a timedelta back from now, or an entry id."""
    if bound is None:
        return default
    if isinstance(bound, datetime.datetime):
        return str(int(bound.timestamp() * 1000))
    if isinstance(bound, datetime.timedelta):
        return str(max(0, int((time.time() - bound.total_seconds()) * 1000)))
    if isinstance(bound, str) and ENTRY_ID.fullmatch(bound):
        return bound
    raise ArgumentError(
        f"signal {channel!r}: {bound!r} is not a time; give a datetime, a timedelta back "
        "from now, or a stream entry id such as '1700000000000-0'"
    )


def check_limit(limit: int | None, channel: str) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ArgumentError(f"signal {channel!r}: limit must be a positive int")


Fields = dict[bytes, bytes]


def entries(
    client: redis.Redis, key: bytes, start: str, end: str = "+", limit: int | None = None
) -> Iterator[tuple[str, Fields]]:
    """The entries of stream ``key`` from ``start`` to ``end``, oldest first, read in
    pages: ``(entry id, fields)``, the event in field ``e``. Ids are inclusive;
    ``"(" + id`` excludes one."""
    left = limit
    while left is None or left > 0:
        page = min(left or _PAGE, _PAGE)
        found = cast(list[tuple[bytes, Fields]], client.xrange(key, start, end, page))
        for entry_id, fields in found:
            yield entry_id.decode(), fields
        if len(found) < page:
            return
        if left is not None:
            left -= len(found)
        start = "(" + found[-1][0].decode()


def read(
    client: redis.Redis,
    codec: Codec,
    signal: Signal,
    key: bytes,
    *,
    since: TimeBound,
    until: TimeBound,
    limit: int | None,
    own_token: bytes,
) -> Iterator[Event]:
    """The events kept for ``signal`` between ``since`` and ``until``, oldest first.

    Bad arguments raise here, before anything is read.
    """
    check_limit(limit, signal.channel)
    start = entry_bound(since, channel=signal.channel, default="-")
    end = entry_bound(until, channel=signal.channel, default="+")
    found = entries(client, key, start, end, limit)
    return (
        envelope.event(own_token, kept=True)
        for envelope, _ in decoded(codec, signal.channel, found)
    )


def decoded(
    codec: Codec,
    channel: str,
    found: Iterable[tuple[str, Fields]],
    on_skip: Callable[[], object] = lambda: None,
) -> Iterator[tuple[Envelope, Fields]]:
    """The envelopes of ``found`` entries, with their ids, and the entries' fields; an
    entry that is not an event is passed to ``on_skip`` and skipped. The first one
    skipped is logged, the others in one line at the end: a stream full of foreign
    entries must not flood the log."""
    skipped = 0
    try:
        for entry_id, fields in found:
            data = fields.get(b"e", b"")
            try:
                envelope = codec.decode(data, stored=True)
            except DecodingError as exc:
                if not skipped:
                    logger.warning("skipped history entry %s of %r: %s", entry_id, channel, exc)
                skipped += 1
                on_skip()
                continue
            yield envelope._replace(stream_id=entry_id), fields
    finally:
        if skipped > 1:
            logger.warning(
                "skipped %d more history entries of %r that are not events", skipped - 1, channel
            )
