"""The `unlearnd` command.

  unlearnd run        start the service with embedded defaults (Redis unless UNLEARND_REDIS_URL, API, workers)
  unlearnd bootstrap  create the API keys and the demo model in the data directory, then exit
  unlearnd verify-receipt FILE [--key-file F]   check a receipt's HMAC signature offline (exit 0 = valid)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unlearnd.settings import Settings


def bootstrap(settings: Settings) -> int:
    from models_store import Store
    from unlearnd.demo import ensure_demo_model
    from unlearnd.security.api_keys import load_or_create_api_keys

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    load_or_create_api_keys(settings)
    if settings.demo_model:
        record = ensure_demo_model(Store(settings.store_dir))
        print(f"demo model {record['name']} ready (weights {record['weights_sha256'][:12]})")
    return 0


def verify_receipt(path: Path, key_file: Path | None, settings: Settings) -> int:
    from unlearnd.security.receipts import load_or_create_receipt_key, verify
    from unlearnd.security.secret_files import key_id

    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read receipt {path}: {exc}", file=sys.stderr)
        return 2
    key = key_file.read_text().strip().encode() if key_file else load_or_create_receipt_key(settings)
    if verify(document, key):
        receipt = document["receipt"]
        print(f"valid: request {receipt.get('request_id')} on model {receipt.get('model')}, "
              f"signed by key {key_id(key)}")
        return 0
    print("INVALID: the signature does not match this receipt under this key", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unlearnd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="start Redis (unless UNLEARND_REDIS_URL), API, workers and janitor")
    commands.add_parser("bootstrap", help="create API keys and the demo model, then exit")
    verify_cmd = commands.add_parser("verify-receipt", help="verify a receipt file offline")
    verify_cmd.add_argument("file", type=Path)
    verify_cmd.add_argument("--key-file", type=Path, default=None,
                            help="file holding the receipt key "
                                 "(default: UNLEARND_RECEIPT_KEY or <data_dir>/receipt_key)")
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "run":
        from unlearnd.cli.launcher import run

        return run(settings)
    if args.command == "verify-receipt":
        return verify_receipt(args.file, args.key_file, settings)
    return bootstrap(settings)

