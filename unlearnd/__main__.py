"""The `unlearnd` command.

  unlearnd run        start the service with embedded defaults (Redis unless UNLEARND_REDIS_URL, API, workers)
  unlearnd bootstrap  create the API keys and the demo model in the data directory, then exit
"""

from __future__ import annotations

import argparse
import sys

from unlearnd.settings import Settings


def bootstrap(settings: Settings) -> int:
    from models_store import Store
    from unlearnd.demo import ensure_demo_model
    from unlearnd.keys import load_or_create_api_keys

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    load_or_create_api_keys(settings)
    if settings.demo_model:
        record = ensure_demo_model(Store(settings.store_dir))
        print(f"demo model {record['name']} ready (weights {record['weights_sha256'][:12]})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unlearnd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="start Redis (unless UNLEARND_REDIS_URL), API, workers and janitor")
    commands.add_parser("bootstrap", help="create API keys and the demo model, then exit")
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "run":
        from unlearnd.launcher import run

        return run(settings)
    return bootstrap(settings)


if __name__ == "__main__":
    sys.exit(main())
