"""The ``signalbus`` command (operators' subcommands arrive with the history issue)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata

import redis

from .bus import DEFAULT_URL

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="signalbus", description=__doc__)
    parser.add_argument("--version", action="version", version=metadata.version("redis-signalbus"))
    parser.add_argument("--url", default=os.environ.get("SIGNALBUS_URL", DEFAULT_URL))
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("ping", help="check that the Redis server answers")
    args = parser.parse_args(argv)
    try:
        info = redis.Redis.from_url(args.url, protocol=2).info("server")
    except (redis.RedisError, ValueError) as exc:
        print(f"signalbus: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.url}: Redis {info.get('redis_version', '?')} answers")
    return 0
