"""The two sides compared: signalbus, and the best plain redis-py does ("raw").

Each side offers the same three things, so the harness is shared and only these vary:

- ``receive(url, prefix, on_event, ready, idle_timeout)``: subscribe, call ``ready()``
  once the server confirmed the subscription, then pass every event's kwargs to
  ``on_event`` until it returns True.
- ``sender(url, prefix, paced)``: a :class:`Sender`.
- the event: kwargs ``user_id`` (int), ``ip`` (str), ``ts`` (float), msgpack on the wire.

signalbus runs as several sides (``SIDES``), each a bus and signal option away from the
default: without history, with a schema (``LoggedIn``: every ``send()`` validates, and
every receiving process validates again), with signing keys (every event HMAC-signed by
the sender and checked by the receivers), and the group and long-history sides of (e).

The raw baseline is redis-py with hiredis: the publisher pipelines batches of 100
PUBLISH (a paced sender publishes each event at once instead, as batching would only
delay it), the subscriber iterates ``pubsub.listen()``, and the payload is
``msgpack.packb`` of the same kwargs dict.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

import msgpack
import pydantic
import redis

import signalbus

NAMESPACE = "bench"
SIGNAL = "logged-in"
SENDER = "bench"
IP = "10.0.0.1"
RAW_BATCH = 100
LONG_HISTORY = signalbus.History(max_count=500_000)
# The same key on the sending and the receiving side.
SIGNING_KEYS = ["bench-key-5c1d8e2f9a0b"]

OnEvent = Callable[[dict[str, Any]], bool]
"""Gets each event's kwargs; returns True when it wants no more."""


class LoggedIn(pydantic.BaseModel):
    """The event's kwargs as a schema, for the typed side."""

    user_id: int
    ip: str
    ts: float


class Sender(Protocol):
    def send(self, user_id: int, ts: float) -> None: ...

    def finish(self) -> dict[str, int]:
        """Wait until everything sent is on the server, close, return counters."""
        ...


class Side(Protocol):
    name: str
    subscribes: bool
    """Whether its receivers subscribe to the channel (group receivers read a stream)."""

    def receive(
        self,
        url: str,
        prefix: str,
        on_event: OnEvent,
        ready: Callable[[], None],
        idle_timeout: float,
    ) -> None: ...

    def sender(self, url: str, prefix: str, *, paced: bool) -> Sender: ...


def channel(prefix: str) -> str:
    """The channel both sides use: signalbus's ``<prefix><namespace>.<signal>``."""
    return f"{prefix}{NAMESPACE}.{SIGNAL}"


def raw_client(url: str, **options: Any) -> redis.Redis:
    # redis-py 8 speaks RESP3 by default; signalbus speaks RESP2, so the baseline does
    # too, or the comparison would measure the protocols rather than the libraries.
    return redis.Redis.from_url(url, protocol=2, **options)


class RawSender:
    def __init__(self, url: str, prefix: str, batch: int) -> None:
        self._client = raw_client(url)
        self._pipe = self._client.pipeline(transaction=False)
        self._channel = channel(prefix)
        self._batch = batch

    def send(self, user_id: int, ts: float) -> None:
        data = msgpack.packb({"user_id": user_id, "ip": IP, "ts": ts})
        if self._batch == 1:
            self._client.publish(self._channel, data)
            return
        self._pipe.publish(self._channel, data)
        if len(self._pipe) >= self._batch:
            self._pipe.execute()

    def finish(self) -> dict[str, int]:
        if len(self._pipe):
            self._pipe.execute()
        self._client.close()
        return {}


class RawSide:
    name = "raw"
    subscribes = True

    def receive(
        self,
        url: str,
        prefix: str,
        on_event: OnEvent,
        ready: Callable[[], None],
        idle_timeout: float,
    ) -> None:
        client = raw_client(url, socket_timeout=idle_timeout)
        pubsub = client.pubsub()
        pubsub.subscribe(channel(prefix))
        try:
            for message in pubsub.listen():
                kind = message["type"]
                if kind == "message":
                    if on_event(msgpack.unpackb(message["data"])):
                        return
                elif kind == "subscribe":
                    ready()
        finally:
            pubsub.close()
            client.close()

    def sender(self, url: str, prefix: str, *, paced: bool) -> Sender:
        return RawSender(url, prefix, batch=1 if paced else RAW_BATCH)


def bus_signal(
    bus: signalbus.Bus, schema: type[pydantic.BaseModel] | None = None
) -> signalbus.Signal:
    return signalbus.Namespace(NAMESPACE, bus=bus).signal(SIGNAL, schema=schema)


class BusSender:
    def __init__(self, bus: signalbus.Bus, signal: signalbus.Signal) -> None:
        self._bus = bus
        self._send = signal.send

    def send(self, user_id: int, ts: float) -> None:
        self._send(SENDER, user_id=user_id, ip=IP, ts=ts)

    def finish(self) -> dict[str, int]:
        if not self._bus.flush(timeout=60):
            raise RuntimeError("signalbus: flush() timed out after 60s")
        stats = self._bus.stats()
        self._bus.close()
        return stats


class BusSide:
    """signalbus with default options, or with ``bus_options`` under another name; with
    ``group``, its receivers are group receivers; with ``schema``, its signal is typed."""

    def __init__(
        self,
        name: str = "signalbus",
        *,
        group: str | None = None,
        schema: type[pydantic.BaseModel] | None = None,
        **bus_options: Any,
    ) -> None:
        self.name = name
        self.subscribes = group is None
        self.schema = schema
        self.bus_options = bus_options
        self._group = group

    def bus(self, url: str, prefix: str, **options: Any) -> signalbus.Bus:
        """A bus with this side's options, ``options`` added or overriding."""
        return signalbus.Bus(url, prefix=prefix, **{**self.bus_options, **options})

    def signal(self, bus: signalbus.Bus) -> signalbus.Signal:
        """The benchmark's signal on ``bus``, with this side's schema."""
        return bus_signal(bus, self.schema)

    def receive(
        self,
        url: str,
        prefix: str,
        on_event: OnEvent,
        ready: Callable[[], None],
        idle_timeout: float,
    ) -> None:
        done = threading.Event()

        def receiver(sender: Any, **kwargs: Any) -> None:
            if on_event(kwargs):
                done.set()

        with self.bus(url, prefix) as bus:
            signal = self.signal(bus)
            # Returns once the server confirmed the subscription, or created the group.
            signal.connect(receiver, group=self._group)
            ready()
            counter = "received" if self._group is None else "group_handled"
            seen = -1
            while not done.wait(idle_timeout):
                if bus.stats()[counter] == seen:
                    raise TimeoutError(f"no event for {idle_timeout}s")
                seen = bus.stats()[counter]

    def sender(self, url: str, prefix: str, *, paced: bool) -> Sender:
        # Default options, as an application would have them: with Redis healthy a burst
        # that fills the queue waits for room rather than dropping.
        bus = self.bus(url, prefix)
        return BusSender(bus, self.signal(bus))


SIDES: dict[str, Side] = {
    side.name: side
    for side in (
        RawSide(),
        BusSide(),
        BusSide("signalbus-no-history", history=False),
        # (a), (c): what validation and signing cost, each against the default side.
        BusSide("signalbus-typed", schema=LoggedIn),
        BusSide("signalbus-signed", signing_keys=SIGNING_KEYS),
        # (e): a burst outruns a group, so both sides keep enough history for all of it.
        BusSide("signalbus-long-history", history=LONG_HISTORY),
        BusSide("signalbus-group", group="bench", history=LONG_HISTORY),
    )
}
