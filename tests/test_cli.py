"""The ``signalbus`` command."""

from __future__ import annotations

import pytest

from signalbus.cli import main


def test_ping_reports_a_reachable_server(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--url", redis_url, "ping"]) == 0
    assert "answers" in capsys.readouterr().out


def test_ping_fails_clearly_when_the_server_is_unreachable(
    unreachable_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--url", unreachable_url, "ping"]) == 1
    assert "cannot reach" in capsys.readouterr().err
