"""The `unlearnd` command (Typer): the service's own commands, which read the `UNLEARND_*` settings, and the
client commands of `unlearnd.cli.remote`, which talk to a running API at `--url` with `--api-key`.

  unlearnd run        start the service with embedded defaults (Redis unless UNLEARND_REDIS_URL, API, workers)
  unlearnd bootstrap  create the API keys and the demo model in the data directory, then exit
  unlearnd verify-receipt FILE [--public-key F]  check a receipt's signature offline: exit 0 valid, 1 invalid,
                                                 2 usage error or missing/unreadable file; never creates keys
  unlearnd rotate-signing-key  retire the signing key into the keyring (what it signed still verifies), make a new one
  unlearnd adopt-store  sign the served states and artifact manifests of a data directory from before signing,
                        after checking each against the files' sha256: exit 0 all adopted, 1 some refused
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.main import get_command

from unlearnd.cli.remote import Remote
from unlearnd.cli.remote import app as client_commands
from unlearnd.client import DEFAULT_URL
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
    tensor blob's; each served state against its model and version, its weights and each artifact it serves
    (bound to the model and those weights; `Store.adopt_manifest`, `Store.adopt_state`). What does not match is
    listed and left unsigned; what is signed already is left alone. Audited as `store.adopted` when anything was
    signed or refused.

    0 when nothing is left unadopted, 1 when something was refused, 2 when the key or the ledger cannot be used.
    It certifies the records as they are now: run it only on a data directory you trust (see the README).
    """
    from models_store import StoreError, open_ledger
    from unlearnd.security.signing import KeyFileError, load_signer, open_store

    try:
        kid = load_signer(settings).current_key_id
    except (KeyFileError, OSError) as exc:
        print(f"cannot load the signing key: {exc}", file=sys.stderr)
        return 2
    store = open_store(settings)
    problems = (StoreError, KeyError, TypeError, ValueError, AttributeError, OSError)
    refused: list[str] = []
    artifacts: list[str] = []
    states: dict[str, list[int]] = {}
    # Artifact manifests first: a state is adopted only when every artifact it serves verifies, signed.
    for kind, name, version in list(store.unsigned_documents()):
        try:
            if kind == "artifact":
                store.adopt_manifest(name)
                artifacts.append(name)
            else:
                assert version is not None
                with store.model_lock(name):  # no state is written by a worker or a rollback meanwhile
                    store.adopt_state(name, version)
                states.setdefault(name, []).append(version)
        except problems as exc:
            refused.append(f"{kind} {name}{'' if version is None else f' state {version}'}: {exc}")

    adopted = sum(len(v) for v in states.values())
    print(f"signed with key {kid}: {adopted} served state(s) of {len(states)} model(s), "
          f"{len(artifacts)} artifact manifest(s)")
    if adopted or artifacts or refused:
        try:
            open_ledger(settings).audit("store.adopted", "cli", detail={
                "key_id": kid, "states": states, "artifacts": artifacts, "refused": refused})
        except Exception as exc:  # database errors, an unwritable data directory: say so, never a traceback
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


# ---- the command line ---------------------------------------------------------------------------------------
app = typer.Typer(name="unlearnd", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Make trained image classifiers forget: run the service, or talk to one.")


@app.callback()
def _options(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="UNLEARND_URL", help="The API the client commands talk to.")]
    = DEFAULT_URL,
    api_key: Annotated[str | None, typer.Option(envvar="UNLEARND_API_KEY", show_default=False,
                                                help="API key the client commands send (its role decides what "
                                                     "they may do).")] = None,
) -> None:
    """Make trained image classifiers forget: run the service (`run`, `bootstrap`, ...), or talk to one
    (`submit`, `wait`, `receipt`, ...)."""
    ctx.obj = Remote(url, api_key)


def _settings() -> Settings:
    """The UNLEARND_* settings; exit 2 when one does not parse."""
    try:
        return Settings()
    except ValueError as exc:  # pydantic's ValidationError: an UNLEARND_* variable that does not parse
        print(f"invalid settings: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None


@app.command("run")
def run_command() -> int:
    """Start Redis (unless UNLEARND_REDIS_URL), the API, workers and the janitor, supervised; Ctrl-C stops
    everything."""
    from unlearnd.cli.launcher import run

    return run(_settings())


@app.command("bootstrap")
def bootstrap_command() -> int:
    """Create the API keys, the signing key and the demo model in the data directory, then exit."""
    return bootstrap(_settings())


@app.command("verify-receipt")
def verify_receipt_command(
    file: Annotated[Path, typer.Argument(help="The receipt (the JSON of GET /v1/forget-requests/{id}/receipt).",
                                         show_default=False)],
    public_key: Annotated[Path | None, typer.Option(help="A PEM Ed25519 public key, or a JSON file with the "
                                                         "answer of GET /v1/keys (default: the server's keys "
                                                         "in this data directory, read-only).")] = None,
    key_file: Annotated[Path | None, typer.Option(help="The HMAC receipt key, only for receipts issued before "
                                                       "Ed25519 signing.")] = None,
) -> int:
    """Verify a receipt offline: exit 0 valid, 1 invalid, 2 usage error or a missing or unreadable file. Never
    creates a key."""
    settings = _settings()
    try:
        return verify_receipt(file, public_key, key_file, settings)
    except Exception as exc:  # never a traceback: whatever was not foreseen is a file we cannot use
        print(f"cannot verify {file}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


@app.command("rotate-signing-key")
def rotate_signing_key_command() -> int:
    """Retire the signing key into its keyring (what it signed still verifies) and generate a new one."""
    return rotate_key(_settings())


@app.command("adopt-store")
def adopt_store_command() -> int:
    """Check the unsigned states and artifact manifests of a data directory from before signing against their
    sha256 and sign them: exit 0 all adopted, 1 some refused, 2 key or ledger unusable."""
    return adopt_store(_settings())


app.add_typer(client_commands)


def main(argv: list[str] | None = None) -> int:
    """`unlearnd`: the exit status of the command. A usage error (an unknown command or option, a missing
    argument) is shown with the usage and raises SystemExit(2), as command-line parsers do."""
    command = get_command(app)
    try:
        code = command.main(args=argv, prog_name="unlearnd", standalone_mode=False)
    except typer.TyperException as exc:  # click's ClickException: a usage error
        exc.show()  # type: ignore[attr-defined]
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        print("Aborted!", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0
