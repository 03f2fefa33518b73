"""The `unlearnd` command.

  unlearnd run        start the service with embedded defaults (Redis unless UNLEARND_REDIS_URL, API, workers)
  unlearnd bootstrap  create the API keys and the demo model in the data directory, then exit
  unlearnd verify-receipt FILE [--public-key F]  check a receipt's signature offline: exit 0 valid, 1 invalid,
                                                 2 usage error or missing/unreadable file; never creates keys
  unlearnd rotate-signing-key  retire the signing key into the keyring (what it signed still verifies), make a new one
  unlearnd adopt-store  sign the served states and artifact manifests of a data directory from before signing,
                        after checking each against the files' sha256: exit 0 all adopted, 1 some refused
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from unlearnd.settings import Settings


def bootstrap(settings: Settings) -> int:
    from unlearnd.demo import ensure_demo_model
    from unlearnd.security.api_keys import load_or_create_api_keys
    from unlearnd.security.signing import open_store

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    load_or_create_api_keys(settings)
    store = open_store(settings)  # creates the signing key when missing
    if settings.demo_model:
        record = ensure_demo_model(store)
        print(f"demo model {record['name']} ready (weights {record['weights_sha256'][:12]})")
    return 0


def verify_receipt(path: Path, public_key: Path | None, key_file: Path | None, settings: Settings) -> int:
    """0 valid, 1 invalid, 2 usage error or a missing/unreadable receipt or key file. Reads keys, never
    creates one."""
    from unlearnd.security.receipts import HMAC_ALGORITHM, check
    from unlearnd.security.signing import KeyFileError, SignatureError, Verifier, local_verifier

    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read receipt {path}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    try:
        given = Verifier.from_file(public_key) if public_key is not None else None
    except KeyFileError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    signature = document.get("signature") if isinstance(document, dict) else None
    receipt = document.get("receipt") if isinstance(document, dict) else None
    if not isinstance(receipt, dict) or not isinstance(signature, dict):
        print(f"INVALID: {path} is not a signed receipt ({{\"receipt\": ..., \"signature\": ...}})", file=sys.stderr)
        return 1
    if signature.get("algorithm") == HMAC_ALGORITHM:  # issued before receipts were signed with Ed25519
        return _verify_hmac_receipt(document, key_file, settings)
    try:
        if given is not None:
            verifier = given
        elif key_file is not None:
            print("--key-file is the HMAC key of older receipts; this receipt is signed with Ed25519: pass "
                  "--public-key FILE (a PEM public key or the JSON of GET /v1/keys)", file=sys.stderr)
            return 2
        else:
            verifier = local_verifier(settings)
    except KeyFileError as exc:
        print(f"{exc}; pass --public-key FILE (a PEM public key or the JSON of GET /v1/keys)", file=sys.stderr)
        return 2
    try:
        check(document, verifier)
    except SignatureError as exc:
        print(f"INVALID: {exc}", file=sys.stderr)
        return 1
    print(f"valid: request {receipt.get('request_id')} on model {receipt.get('model')}, "
          f"signed by key {signature.get('key_id')}")
    return 0


def _verify_hmac_receipt(document: dict, key_file: Path | None, settings: Settings) -> int:
    """An older receipt signed with the HMAC receipt key: only that key's holder can check it."""
    from unlearnd.security.receipts import verify_hmac
    from unlearnd.security.secret_files import key_id

    if key_file is not None:
        try:
            key = key_file.read_text().strip().encode()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"cannot read key file {key_file}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
            return 2
    elif settings.receipt_key:
        key = settings.receipt_key.encode()
    elif (settings.data_dir / "receipt_key").is_file():
        key = (settings.data_dir / "receipt_key").read_text().strip().encode()
    else:
        print("this receipt is signed with HMAC-SHA256 (issued before Ed25519 receipts): pass --key-file "
              "with the server's receipt key", file=sys.stderr)
        return 2
    if verify_hmac(document, key):
        receipt = document["receipt"]
        print(f"valid: request {receipt.get('request_id')} on model {receipt.get('model')}, "
              f"HMAC key {key_id(key)}")
        return 0
    print("INVALID: the HMAC does not match this receipt under this key", file=sys.stderr)
    return 1


def rotate_key(settings: Settings) -> int:
    from unlearnd.security.signing import KeyFileError, keyring_path, rotate_signing_key, signing_key_file

    path = signing_key_file(settings)
    try:
        old, new = rotate_signing_key(path)
    except (KeyFileError, OSError) as exc:
        print(f"cannot rotate the signing key: {exc}", file=sys.stderr)
        return 2
    if old is None:
        print(f"no signing key at {path}; created {new}")
    else:
        print(f"signing key {old} retired into {keyring_path(path)} (it still verifies what it signed); "
              f"new key {new} in {path}. Running processes sign with it from their next signature.")
    return 0


def adopt_store(settings: Settings) -> int:
    """Sign, with the current key, what a data directory from before signing holds unsigned, after checking it
    as every load would, except the missing signature: each artifact manifest against its own sha256 and its
    tensor file's; each served state (state.json and every states/<n>.json) against its model and version, its
    weights file and each artifact it serves (bound to the model and those weights). What does not match is
    listed and left unsigned; what is signed already is left alone (one whose signature does not verify is
    listed too). Audited as `store.adopted` when anything was signed or refused.

    0 when nothing is left unadopted, 1 when something was refused, 2 when the key or the ledger cannot be used.
    It certifies the files as they are now: run it only on a data directory you trust (see the README).
    """
    from models_store import IntegrityError, Ledger, Store, StoreError
    from models_store.files import atomic_write_json, canonical_json, read_json, sha256_bytes
    from models_store.store import SIGNATURE, check_name
    from unlearnd.security.signing import KeyFileError, load_signer

    root = settings.store_dir
    if not root.is_dir():
        print(f"no store at {root}: nothing to adopt")
        return 0
    try:
        signer = load_signer(settings)
    except (KeyFileError, OSError) as exc:
        print(f"cannot load the signing key: {exc}", file=sys.stderr)
        return 2
    kid = signer.current_key_id
    signed = Store(root, signer=signer)  # verifies as the service does
    plain = Store(root)  # the same files, hashes checked, signatures not
    problems = (StoreError, KeyError, TypeError, ValueError, AttributeError, OSError)
    refused: list[str] = []
    already = 0

    def with_signature(document: dict[str, Any]) -> dict[str, Any]:
        return {**document, SIGNATURE: signer.sign(canonical_json(document))}

    def read_object(path: Path) -> dict[str, Any]:
        document = read_json(path)
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        return document

    # Artifact manifests first: a state is adopted only when every artifact it serves verifies, signed.
    artifacts: list[str] = []
    for path in sorted((root / "artifacts").glob("*.json")):
        artifact_id = path.stem
        try:
            if SIGNATURE in read_object(path):
                signed.get_artifact_manifest(artifact_id)
                already += 1
                continue
            manifest = plain.get_artifact_manifest(artifact_id)  # its id and its own sha256
            tensors = root / "artifacts" / f"{artifact_id}.safetensors"
            if not tensors.exists() or sha256_bytes(tensors.read_bytes()) != manifest["file_sha256"]:
                raise IntegrityError(f"tensor file of artifact {artifact_id!r} is missing or does not match "
                                     "the manifest's file_sha256")
        except problems as exc:
            refused.append(f"{path.relative_to(root)}: {exc}")
            continue
        atomic_write_json(path, with_signature(manifest))
        artifacts.append(artifact_id)

    states: dict[str, list[str]] = {}
    models_dir = root / "models"
    for model_dir in sorted(p for p in models_dir.iterdir() if p.is_dir()) if models_dir.is_dir() else []:
        name = model_dir.name
        try:
            check_name(name)
        except StoreError:
            continue  # not a directory the store ever reads
        history = sorted((model_dir / "states").glob("*.json"),
                         key=lambda p: (not p.stem.isdigit(), int(p.stem) if p.stem.isdigit() else 0, p.name))
        files = [(p, int(p.stem) if p.stem.isdigit() else None) for p in history]
        files.append((model_dir / "state.json", None))
        with signed.model_lock(name):  # no state is written by a worker or a rollback meanwhile
            for path, version in files:
                if not path.exists():
                    continue
                try:
                    state = read_object(path)
                    if SIGNATURE in state:
                        signed.verify_state(name, state, version)
                        already += 1
                        continue
                    candidate = with_signature(state)
                    signed.verify_state(name, candidate, version)  # names this model (and version)
                    signed.verify_state_files(name, candidate)  # weights, artifacts: hashes and signatures
                except problems as exc:
                    refused.append(f"{path.relative_to(root)}: {exc}")
                    continue
                atomic_write_json(path, candidate)
                states.setdefault(name, []).append(str(path.relative_to(model_dir)))

    adopted = sum(len(v) for v in states.values())
    print(f"signed with key {kid}: {adopted} served state file(s) of {len(states)} model(s), "
          f"{len(artifacts)} artifact manifest(s); {already} already signed, left alone")
    if adopted or artifacts or refused:
        try:
            Ledger(settings.ledger_path).audit("store.adopted", "cli", detail={
                "key_id": kid, "states": states, "artifacts": artifacts, "already_signed": already,
                "refused": refused})
        except Exception as exc:  # sqlite3 errors, an unwritable data directory: say so, never a traceback
            print(f"signed, but the audit entry store.adopted could not be written: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            return 2
    if refused:
        print(f"{len(refused)} not adopted (left as they are, unsigned ones stay refused by the service; "
              "restore them, e.g. from a backup, and run again):", file=sys.stderr)
        for line in refused:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unlearnd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="start Redis (unless UNLEARND_REDIS_URL), API, workers and janitor")
    commands.add_parser("bootstrap", help="create API keys and the demo model, then exit")
    verify_cmd = commands.add_parser(
        "verify-receipt", help="verify a receipt file offline (exit 0 valid, 1 invalid, 2 usage or missing file)")
    verify_cmd.add_argument("file", type=Path)
    verify_cmd.add_argument("--public-key", type=Path, default=None,
                            help="a PEM Ed25519 public key, or a JSON file with the answer of GET /v1/keys "
                                 "(default: the server's keys in this data directory, read-only)")
    verify_cmd.add_argument("--key-file", type=Path, default=None,
                            help="the HMAC receipt key, only for receipts issued before Ed25519 signing")
    commands.add_parser("rotate-signing-key",
                        help="retire the signing key into its keyring and generate a new one")
    commands.add_parser("adopt-store",
                        help="check the unsigned states and artifact manifests of a data directory from before "
                             "signing against their sha256 and sign them (exit 0 all adopted, 1 some refused)")
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValueError as exc:  # pydantic's ValidationError: an UNLEARND_* variable that does not parse
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    if args.command == "run":
        from unlearnd.cli.launcher import run

        return run(settings)
    if args.command == "verify-receipt":
        try:
            return verify_receipt(args.file, args.public_key, args.key_file, settings)
        except Exception as exc:  # never a traceback: whatever was not foreseen is a file we cannot use
            print(f"cannot verify {args.file}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
    if args.command == "rotate-signing-key":
        return rotate_key(settings)
    if args.command == "adopt-store":
        return adopt_store(settings)
    return bootstrap(settings)

