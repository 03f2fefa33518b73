"""The `unlearnd` command: `unlearnd run` starts the service with embedded defaults."""

from __future__ import annotations

import argparse
import sys

from unlearnd.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unlearnd", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="start Redis (unless UNLEARND_REDIS_URL), API, workers and janitor")
    args = parser.parse_args(argv)
    if args.command == "run":
        from unlearnd.launcher import run

        return run(Settings())
    return 2


if __name__ == "__main__":
    sys.exit(main())
