"""The helpers for applications' own tests: the pytest plugin's fixtures and capture()."""

from __future__ import annotations

import pytest

import signalbus
from signalbus import Bus, Namespace
from signalbus.testing import capture

pytest_plugins = ["pytester"]


def test_capture_records_local_and_remote_events_with_their_metadata(signalbus_bus: Bus) -> None:
    signal = Namespace("shop").signal("paid")
    assert signal.bus is signalbus_bus  # the fixture made it the default bus
    other = Bus(signalbus_bus.url, prefix=signalbus_bus.prefix)
    try:
        with capture(signal) as captured:
            signal.send("web", order=1)
            Namespace("shop", bus=other).signal("paid").send("worker", order=2)
            local, remote = captured.wait(2)
    finally:
        other.close()
    assert (local.sender, local.kwargs, local.event and local.event.remote) == (
        "web",
        {"order": 1},
        False,
    )
    assert (remote.sender, remote.kwargs, remote.event and remote.event.remote) == (
        "worker",
        {"order": 2},
        True,
    )


def test_capture_can_narrow_to_one_sender(signalbus_fake_bus: Bus) -> None:
    signal = Namespace("shop").signal("paid")
    with capture(signal, sender="web") as captured:
        signal.send("web", order=1)
        signal.send("cron", order=2)
    assert [event.kwargs for event in captured.events] == [{"order": 1}]
    assert signalbus.bus.default_bus() is signalbus_fake_bus


def test_the_plugin_is_loaded_in_a_users_test_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from signalbus import Namespace
        from signalbus.testing import capture

        def test_it(signalbus_fake_bus):
            signal = Namespace("app").signal("done")
            with capture(signal) as captured:
                signal.send("me", n=1)
            assert captured.events[0].kwargs == {"n": 1}
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
