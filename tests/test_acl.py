"""Redis ACLs end to end: a user limited to some channels gets clear errors outside
them, and everything inside them keeps working."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pydantic
import pytest

from signalbus import Bus, Namespace, PublishError, SubscribeError
from signalbus.keyspace import catalog_key
from signalbus.testing import RedisServer

from .helpers import Recorder, run_cli, wait_for


@pytest.fixture
def acl_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def auth_only(acl_server: RedisServer, prefix: str) -> Iterator[Callable[..., Bus]]:
    """Make buses as a Redis user allowed the ``auth.*`` channels alone."""
    admin = acl_server.client()
    admin.acl_setuser(
        "auth-service",
        enabled=True,
        passwords=["+secret"],
        keys=["*"],
        channels=[f"{prefix}auth.*"],
        commands=["+@all"],
        reset_channels=True,
    )
    url = f"redis://auth-service:secret@127.0.0.1:{acl_server.port}/0"
    buses: list[Bus] = []

    def make(**options: object) -> Bus:
        bus = Bus(url, prefix=prefix, **options)  # type: ignore[arg-type]
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        bus.close()
    admin.close()


def test_subscribing_outside_the_acl_raises_and_the_rest_keeps_working(
    auth_only: Callable[..., Bus], caplog: pytest.LogCaptureFixture
) -> None:
    bus = auth_only(subscribe_timeout=60)  # a refusal must not wait for this
    auth = Namespace("auth", bus=bus).signal("logged-in")
    billing = Namespace("billing", bus=bus).signal("paid")
    before, after, refused = Recorder(), Recorder(), Recorder()
    auth.connect(before)
    with caplog.at_level(logging.WARNING, "signalbus"), pytest.raises(SubscribeError) as raised:
        billing.connect(refused)
    message = str(raised.value)
    assert "billing.paid" in message and "ACL" in message
    assert "no permissions" in message  # Redis's own words
    assert not billing.receivers  # nothing half-connected
    Namespace("auth", bus=bus).signal("logged-out").connect(after)

    sender = Namespace("auth", bus=auth_only())
    sender.signal("logged-in").send("web", n=1)
    sender.signal("logged-out").send("web", n=2)
    assert before.wait(1) == [("web", {"n": 1})]
    assert after.wait(1) == [("web", {"n": 2})]
    assert refused.calls == []


def test_a_channel_refused_after_a_reconnect_leaves_the_others_subscribed(
    auth_only: Callable[..., Bus],
    acl_server: RedisServer,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = auth_only()
    kept, lost = Recorder(), Recorder()
    Namespace("auth", bus=bus).signal("logged-in").connect(kept)
    Namespace("auth", bus=bus).signal("audit").connect(lost)
    admin = acl_server.client()
    with caplog.at_level(logging.WARNING, "signalbus"):
        # The operator narrows the ACL (Redis may drop the connection itself); the
        # bus subscribes again after any reconnect.
        admin.execute_command(
            "ACL", "SETUSER", "auth-service", "resetchannels", f"&{prefix}auth.logged-in"
        )
        admin.client_kill_filter(_type="pubsub")
        wait_for(lambda: "Redis refused to subscribe to" in caplog.text)
    assert bus.stats()["reconnects"] >= 1
    assert f"{prefix}auth.audit" in caplog.text
    Namespace("auth", bus=auth_only()).signal("logged-in").send("web", n=1)
    assert kept.wait(1) == [("web", {"n": 1})]
    assert admin.pubsub_numsub(f"{prefix}auth.audit") == [(f"{prefix}auth.audit".encode(), 0)]
    admin.close()


def test_publishing_outside_the_acl_is_refused_clearly(
    auth_only: Callable[..., Bus], acl_server: RedisServer, prefix: str
) -> None:
    synchronous = auth_only(synchronous=True)
    with pytest.raises(PublishError) as raised:
        Namespace("billing", bus=synchronous).signal("paid").send("web", n=1)
    assert "billing.paid" in str(raised.value)
    assert "can't publish to the channel" in str(raised.value)  # Redis's own words

    queued = auth_only()
    received = Recorder()
    Namespace("auth", bus=auth_only()).signal("logged-in").connect(received)
    Namespace("billing", bus=queued).signal("paid").send("web", n=1)
    Namespace("auth", bus=queued).signal("logged-in").send("web", n=2)
    assert received.wait(1) == [("web", {"n": 2})]
    wait_for(lambda: queued.stats()["dropped"] == 1)
    admin = acl_server.client()
    assert admin.xlen(f"{prefix}signalbus:history:billing.paid") == 0  # nothing half-done
    admin.close()


def test_each_refused_channel_is_logged_by_name_and_counted(
    auth_only: Callable[..., Bus], prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    bus = auth_only()
    billing = Namespace("billing", bus=bus)
    with caplog.at_level(logging.WARNING, "signalbus"):
        for name in ("paid", "refunded"):
            with pytest.raises(SubscribeError):
                billing.signal(name).connect(Recorder())
    refusals = [r.getMessage() for r in caplog.records if "refused to subscribe" in r.getMessage()]
    assert len(refusals) == 2
    assert f"{prefix}billing.paid" in refusals[0] and f"{prefix}billing.refunded" in refusals[1]
    assert bus.stats()["subscribe_refused"] == 2


def test_a_user_who_may_not_touch_the_epoch_key_still_receives(
    acl_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The data epoch is read before subscribing; an ACL that refuses it is logged once
    and the subscription goes on (gap recovery then leans on positions alone)."""
    admin = acl_server.client()
    admin.acl_setuser(
        "history-only",
        enabled=True,
        passwords=["+secret"],
        keys=[f"{prefix}signalbus:history:*", f"{prefix}signalbus:catalog"],
        channels=[f"{prefix}auth.*"],
        commands=["+@all"],
        reset_channels=True,
    )
    url = f"redis://history-only:secret@127.0.0.1:{acl_server.port}/0"
    received = Recorder()
    with (
        Bus(url, prefix=prefix) as receiver_bus,
        Bus(acl_server.url, prefix=prefix) as sender_bus,
        caplog.at_level(logging.WARNING, "signalbus"),
    ):
        Namespace("auth", bus=receiver_bus).signal("logged-in").connect(received)
        Namespace("auth", bus=sender_bus).signal("logged-in").send("web", n=1)
        assert received.wait(1) == [("web", {"n": 1})]
        wait_for(lambda: "data epoch key" in caplog.text)
    admin.close()


class LoggedIn(pydantic.BaseModel):
    user_id: int


def test_cli_send_by_a_user_who_may_not_read_the_catalog_says_it_did_not_check(
    acl_server: RedisServer, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = acl_server.client()
    admin.acl_setuser(
        "publisher",
        enabled=True,
        passwords=["+secret"],
        keys=[f"{prefix}signalbus:history:*"],
        channels=[f"{prefix}auth.*"],
        commands=["+@all"],
        reset_channels=True,
    )
    url = f"redis://publisher:secret@127.0.0.1:{acl_server.port}/0"
    received = Recorder()
    with Bus(acl_server.url, prefix=prefix) as bus:
        Namespace("auth", bus=bus).signal("logged-in", schema=LoggedIn).connect(received)
        wait_for(lambda: admin.hexists(catalog_key(prefix), "auth.logged-in"))
        code, out, err = run_cli(
            capsys, "--url", url, "--prefix", prefix, "send", "auth.logged-in", "user_id=7"
        )
        assert (code, out) == (0, "sent auth.logged-in  sender=None  user_id=7\n")
        assert err.startswith("the catalog cannot be read (this user has no permissions")
        assert err.endswith("; the values were not checked against a schema\n")
        assert received.wait(1) == [(None, {"user_id": 7})]
    admin.close()
