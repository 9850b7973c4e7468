"""Signed messages against a real server: keys that rotate, and unsigned, tampered and
moved messages refused before anything is decoded."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import hypothesis
import msgpack
import pytest
import redis
from hypothesis import strategies

from signalbus import Bus, ConfigurationError, DecodingError, Namespace
from signalbus.signing import Signer, _Key
from signalbus.wire import SIGNATURE_HEAD, SIGNED_OFFSET

from .helpers import Child, Recorder, wait_for

OLD, NEW = "2026-10: the old key", b"2026-11: the new key"


def listen(bus: Bus, name: str = "logged-in") -> Recorder:
    recorder = Recorder()
    Namespace("auth", bus=bus).signal(name).connect(recorder, weak=False)
    return recorder


def send(bus: Bus, n: int, name: str = "logged-in") -> None:
    Namespace("auth", bus=bus).signal(name).send("web", n=n)
    assert bus.flush(10)


def test_keys_rotate_without_downtime(make_bus: Callable[..., Bus]) -> None:
    receiver_bus = make_bus(signing_keys=[NEW, OLD])  # knows both while keys change
    recorder = listen(receiver_bus)
    send(make_bus(signing_keys=[OLD]), 1)  # a process not yet moved on
    send(make_bus(signing_keys=[NEW, OLD]), 2)  # one that has
    assert recorder.wait(2) == [("web", {"n": 1}), ("web", {"n": 2})]
    assert receiver_bus.stats()["invalid"] == 0


def test_unsigned_and_wrongly_signed_events_are_dropped_and_counted(
    make_bus: Callable[..., Bus], caplog: pytest.LogCaptureFixture
) -> None:
    receiver_bus = make_bus(signing_keys=[NEW])
    recorder = listen(receiver_bus)
    send(make_bus(), 1)  # unsigned
    send(make_bus(signing_keys=["someone else's key, not ours"]), 2)
    send(make_bus(signing_keys=[NEW]), 3)  # once this one is in, the others were refused
    assert recorder.wait(1) == [("web", {"n": 3})]
    wait_for(lambda: receiver_bus.stats()["invalid"] == 2)
    # One warning for both: the log of refused messages cannot be flooded.
    assert caplog.text.count("skipped a message") == 1 and "unsigned message" in caplog.text


def test_a_tampered_or_moved_message_is_refused(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str
) -> None:
    receiver_bus = make_bus(signing_keys=[NEW])
    on_login, on_logout = listen(receiver_bus), listen(receiver_bus, "logged-out")
    sender_bus = make_bus(signing_keys=[NEW])
    pubsub = raw.pubsub()
    pubsub.subscribe(f"{prefix}auth.logged-in")
    wait_for(lambda: pubsub.get_message(timeout=0.1))  # the subscription
    send(sender_bus, 1)
    message = wait_for(lambda: pubsub.get_message(timeout=0.1))["data"]
    pubsub.close()
    assert message.startswith(SIGNATURE_HEAD)
    tampered = bytearray(message)
    tampered[-20] ^= 1  # inside the signed part
    raw.publish(f"{prefix}auth.logged-in", bytes(tampered))
    raw.publish(f"{prefix}auth.logged-out", message)  # a signed login, moved
    send(sender_bus, 2)
    send(sender_bus, 3, "logged-out")
    assert on_login.wait(2) == [("web", {"n": 1}), ("web", {"n": 2})]
    assert on_logout.wait(1) == [("web", {"n": 3})]
    wait_for(lambda: receiver_bus.stats()["invalid"] == 2)


def test_history_and_replays_are_verified_the_same_way(make_bus: Callable[..., Bus]) -> None:
    signed, unsigned = make_bus(signing_keys=[NEW]), make_bus()
    send(unsigned, 0)  # kept, but not signed
    send(signed, 1)
    reader = Namespace("auth", bus=signed).signal("logged-in")
    assert [event.kwargs for event in reader.history()] == [{"n": 1}]
    recorder = listen(make_bus(signing_keys=[NEW]))
    report = reader.replay("0")
    assert (report.events, report.skipped) == (1, 1)
    assert recorder.wait(1) == [("web", {"n": 1})]


def test_one_string_is_one_key(make_bus: Callable[..., Bus]) -> None:
    """A key given alone, not in a list, is one key: never one key per character, which
    let a forger who signed with the key "a" reach a receiver whose key was a phrase."""
    phrase = "a long phrase, commas and all"
    receiver_bus = make_bus(signing_keys=phrase)
    assert len(receiver_bus.codec.signer.keys) == 1
    recorder = listen(receiver_bus)
    forger = make_bus(signing_keys=[NEW])
    forger.codec.signer.keys = [_Key(b"a")]  # one of the phrase's characters
    send(forger, 1)
    send(make_bus(signing_keys=phrase.encode()), 2)  # bytes too
    assert recorder.wait(1) == [("web", {"n": 2})]
    assert receiver_bus.stats()["invalid"] == 1


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        ("", "signing_keys: key 1 is empty"),
        ([NEW, ""], "signing_keys: key 2 is empty"),
        ("hunter2", "signing_keys: key 1 is only 7 bytes long; a signing key must be at least 16"),
        ([b"short"], "key 1 is only 5 bytes long"),
        ([NEW, 42], "key 2 is a int; a key is a str or bytes"),
        (42, "signing_keys must be a key .str or bytes. or a list of keys, not int"),
    ],
)
def test_signing_keys_must_be_usable(
    make_bus: Callable[..., Bus], keys: object, error: str
) -> None:
    with pytest.raises(ConfigurationError, match=error) as raised:
        make_bus(signing_keys=keys)
    assert "hunter2" not in str(raised.value)  # a message never shows a key


@pytest.mark.parametrize(
    ("variable", "error"),
    [
        (f"{NEW.decode()},", r"\$SIGNALBUS_SIGNING_KEYS: key 2 is empty"),
        ("short, keys", r"\$SIGNALBUS_SIGNING_KEYS: key 1 is only 5 bytes long"),
    ],
)
def test_keys_from_the_environment_must_be_usable(
    make_bus: Callable[..., Bus], monkeypatch: pytest.MonkeyPatch, variable: str, error: str
) -> None:
    monkeypatch.setenv("SIGNALBUS_SIGNING_KEYS", variable)
    with pytest.raises(ConfigurationError, match=error):
        make_bus()
    monkeypatch.setenv("SIGNALBUS_SIGNING_KEYS", "  ")  # blank: no keys, as unset
    assert not make_bus().codec.signer.signs


def test_keys_come_from_the_environment(
    make_bus: Callable[..., Bus], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIGNALBUS_SIGNING_KEYS", f" {NEW.decode()} , {OLD}")  # spaces go
    signer = make_bus().codec.signer
    envelope = b"\x98" + b"an event"
    assert signer.sign(envelope)[len(SIGNATURE_HEAD) : SIGNED_OFFSET] == hmac.digest(
        NEW, envelope, hashlib.sha256
    )
    assert signer.open(Signer([OLD]).sign(envelope)) == envelope


def test_rotation_across_processes(
    make_bus: Callable[..., Bus], redis_url: str, prefix: str
) -> None:
    """A process that took its keys from the environment, new first, hears the senders
    still on the old key and those on the new one, and nobody else."""
    listener = Child(
        "listen", redis_url, prefix, "2", env={"SIGNALBUS_SIGNING_KEYS": f"{NEW.decode()},{OLD}"}
    )
    try:
        listener.wait_ready()
        send(make_bus(), 0)  # unsigned: refused
        send(make_bus(signing_keys=["someone else's key, not ours"]), 1)  # refused
        send(make_bus(signing_keys=[OLD]), 2)
        send(make_bus(signing_keys=[NEW, OLD]), 3)
        wait_for(lambda: len(listener.events()) == 2)
        assert [event["kwargs"]["n"] for event in listener.events()] == [2, 3]
        assert listener.finish() == 0, listener.stderr()
    finally:
        listener.kill()


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    key=strategies.binary(min_size=1, max_size=200), message=strategies.binary(max_size=300)
)
def test_signatures_are_hmac_sha256(key: bytes, message: bytes) -> None:
    """The signer's HMAC, made faster by keeping the keyed hashes, is the standard one."""
    assert _Key(key).digest(message) == hmac.digest(key, message, hashlib.sha256)


@pytest.mark.parametrize("entry_id", ["1-0", "1795554776888-0", "18446744073709551615-" * 2])
@pytest.mark.parametrize("replayed", [False, True])
def test_a_signature_holds_with_any_entry_id_and_replay_mark_appended(
    entry_id: str, replayed: bool
) -> None:
    signer = Signer([NEW])
    envelope = b"\x98" + b"an event of eight fields"
    signed = signer.sign(envelope)
    as_published = (
        signed[:SIGNED_OFFSET]
        + (b"\x9a" if replayed else b"\x99")
        + signed[SIGNED_OFFSET + 1 :]
        + msgpack.packb(entry_id.rstrip("-"))
        + (b"\xc3" if replayed else b"")
    )
    assert signer.open(as_published) == as_published[SIGNED_OFFSET:]
    with pytest.raises(DecodingError):  # a byte of the event changed
        signer.open(as_published.replace(b"eight", b"Eight"))
