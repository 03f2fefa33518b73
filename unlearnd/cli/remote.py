"""The client commands of `unlearnd`: a running API at `--url` (env UNLEARND_URL), through `unlearnd.client`.

Records print as JSON on stdout (lists and models also as a table); messages and the progress bar go to stderr.
Exit status: 0 done, 1 the API refused (its problem is printed) or could not be reached, or the request waited
for did not succeed; 2 a usage error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from unlearnd.client import TERMINAL, Client, ForgetRequest, Method, UnlearndError

app = typer.Typer()

RequestId = Annotated[str, typer.Argument(help="The forget request's id (fr_...).", show_default=False)]
ModelName = Annotated[str, typer.Argument(help="The model's name.", show_default=False)]
AsJson = Annotated[bool, typer.Option("--json", help="Print the JSON answer instead of a table.")]
_PROBLEM_MEMBERS = {"type", "title", "status", "detail", "instance"}


@dataclass(frozen=True)
class Remote:
    """Where the client commands send their requests, and with which key (the global options)."""

    url: str
    api_key: str | None


@contextmanager
def _api(ctx: typer.Context) -> Iterator[Client]:
    """A client for the global --url and --api-key; an error answer is printed and exits 1."""
    remote: Remote = ctx.obj
    try:
        with Client(remote.url, remote.api_key) as api:
            yield api
    except UnlearndError as exc:
        extra = {k: v for k, v in exc.problem.items() if k not in _PROBLEM_MEMBERS}
        print(f"error: {exc}" + (f" {json.dumps(extra)}" if extra else ""), file=sys.stderr)
        raise typer.Exit(1) from None


def _echo_json(document: Any) -> None:
    typer.echo(json.dumps(document, indent=2))


def _table(rows: list[list[Any]], header: list[str]) -> None:
    widths = [max(len(str(v)) for v in column) for column in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        typer.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


# ---- forget requests -------------------------------------------------------------------------------------------
def _read_ids(path: Path) -> list[str]:
    """Sample ids, one per line (blank lines and surrounding spaces ignored); `-` reads stdin."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


@app.command()
def submit(
    ctx: typer.Context,
    model: ModelName,
    classes: Annotated[list[int] | None, typer.Argument(help="Class indices to forget.", show_default=False)]
    = None,
    samples_file: Annotated[Path | None, typer.Option(help="Forget these training samples instead: a file of "
                                                           "sample ids, one per line (- reads stdin).")] = None,
    method: Annotated[Method, typer.Option(help="How to forget (auto picks by the request's kind).")] = "auto",
    reason: Annotated[str | None, typer.Option(help="Why (e.g. the deletion request's reference).")] = None,
    callback_url: Annotated[str | None, typer.Option(help="POSTed the final record when it ends.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the request's id.")] = False,
) -> None:
    """Ask MODEL to forget CLASSES (or the samples of --samples-file); prints the accepted request."""
    if bool(classes) == (samples_file is not None):
        raise typer.BadParameter("give class indices or --samples-file, not both and not neither")
    samples = _read_ids(samples_file) if samples_file is not None else None
    with _api(ctx) as api:
        accepted = api.submit(model, classes=classes or None, samples=samples, method=method, reason=reason,
                              callback_url=callback_url)
    if quiet:
        typer.echo(accepted["id"])
    else:
        _echo_json(accepted)


@app.command()
def wait(
    ctx: typer.Context,
    request_id: RequestId,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds (exit 1).")] = None,
) -> None:
    """Follow a request with a progress bar until it ends; prints its final record. Exit 0 when it succeeded,
    1 when it failed, was cancelled or reverted, or the wait timed out."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[eta]}"))
    with _api(ctx) as api, Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(request_id, total=1.0, eta="")

        def show(record: ForgetRequest) -> None:
            progress = record.get("progress") or {}
            eta = progress.get("eta_s")
            bar.update(task, completed=progress.get("fraction") or 0.0,
                       description=f"{record['status']}: {progress.get('stage', '')}",
                       eta="" if record["status"] in TERMINAL else "ETA …" if eta is None else f"ETA {eta:.0f} s")

        try:
            record = api.wait(request_id, timeout_s=timeout, on_progress=show)
        except TimeoutError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(1) from None
    _echo_json(record)
    if record["status"] != "succeeded":
        print(f"request {request_id} ended {record['status']}: {record.get('error') or ''}".rstrip(": "),
              file=sys.stderr)
        raise typer.Exit(1)


@app.command()
def status(ctx: typer.Context, request_id: RequestId) -> None:
    """Print a request: status, progress, result."""
    with _api(ctx) as api:
        _echo_json(api.get(request_id))


@app.command("list")
def list_requests(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="Only this model's requests.")] = None,
    status: Annotated[list[str] | None, typer.Option(help="Only requests in this status (repeat it, or "
                                                          "comma-separate several).")] = None,
    newest_first: Annotated[bool, typer.Option(help="Newest first.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=500, help="At most this many.")] = 50,
    cursor: Annotated[str | None, typer.Option(help="The next_cursor of the previous page.")] = None,
    as_json: AsJson = False,
) -> None:
    """List forget requests (oldest first, unless --newest-first)."""
    statuses = [s for value in status or [] for s in value.split(",") if s]
    with _api(ctx) as api:
        page = api.list_requests(model=model, status=statuses, order="desc" if newest_first else "asc", limit=limit,
                                 cursor=cursor)
    if as_json:
        _echo_json(page)
        return
    _table([[r["id"], r["model"], r["status"], r["method"], r.get("classes") or f"{len(r.get('samples') or [])} "
             "samples", r["created_at"]] for r in page["data"]], ["ID", "MODEL", "STATUS", "METHOD", "FORGETS",
                                                                   "CREATED"])
    if page["next_cursor"]:
        print(f"more: --cursor {page['next_cursor']}", file=sys.stderr)


@app.command()
def cancel(ctx: typer.Context, request_id: RequestId) -> None:
    """Cancel a request that has not finished (a running one stops at its next progress report)."""
    with _api(ctx) as api:
        _echo_json(api.cancel(request_id))


@app.command()
def receipt(
    ctx: typer.Context,
    request_id: RequestId,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write it to this file.")] = None,
) -> None:
    """Print (or write) the signed receipt of a succeeded request, exactly as issued; check it with
    `unlearnd verify-receipt`."""
    with _api(ctx) as api:
        text = api.request("GET", f"/v1/forget-requests/{request_id}/receipt").text
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text)
        print(f"wrote {output}", file=sys.stderr)


@app.command()
def report(
    ctx: typer.Context,
    request_id: RequestId,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Default: <id>.png.")] = None,
) -> None:
    """Write the PNG report of a succeeded request: δ, examples before and after, per-class accuracy."""
    with _api(ctx) as api:
        png = api.report_png(request_id)
    path = output or Path(f"{request_id}.png")
    path.write_bytes(png)
    typer.echo(str(path))


# ---- models and predictions ------------------------------------------------------------------------------------
@app.command()
def models(ctx: typer.Context, as_json: AsJson = False) -> None:
    """List the models and the unlearning in force."""
    with _api(ctx) as api:
        data = api.models()
    if as_json:
        _echo_json(data)
        return
    _table([[m["name"], m["version"], m["num_classes"], "x".join(map(str, m["input_shape"])),
             m["unlearning"]["state_version"], m["unlearning"]["forgotten_classes"] or "",
             len(m["unlearning"]["requests"])] for m in data],
           ["NAME", "VERSION", "CLASSES", "INPUT", "STATE", "FORGOTTEN", "REQUESTS"])


@app.command()
def predict(
    ctx: typer.Context,
    model: ModelName,
    images: Annotated[list[Path], typer.Argument(help="PNG or JPEG files.", show_default=False)],
    as_json: AsJson = False,
) -> None:
    """Predict the class of image files, with the unlearning in force applied."""
    with _api(ctx) as api:
        answer = api.predict_images(model, images)
    if as_json:
        _echo_json(answer)
        return
    _table([[str(path), p["label"], f"{max(p['probabilities']):.3f}"]
            for path, p in zip(images, answer["predictions"], strict=True)], ["IMAGE", "LABEL", "PROBABILITY"])
    print(f"model {answer['model']} v{answer['model_version']}, state {answer['state_version']}, "
          f"applied {answer['applied'] or 'nothing'}", file=sys.stderr)


@app.command()
def rollback(
    ctx: typer.Context,
    model: ModelName,
    state_version: Annotated[int, typer.Argument(help="The earlier state to serve again.", show_default=False)],
    reason: Annotated[str | None, typer.Option(help="Why (required when requests are reinstated).")] = None,
    reinstate: Annotated[list[str] | None, typer.Option(help="A request this rollback takes out of force "
                                                             "(repeat for each).")] = None,
    force: Annotated[bool, typer.Option(help="Take every such request out of force.")] = False,
) -> None:
    """Serve an earlier state of MODEL again (admin)."""
    with _api(ctx) as api:
        _echo_json(api.rollback(model, state_version, reason=reason, reinstate=reinstate or [], force=force))


# ---- registry and keys -----------------------------------------------------------------------------------------
@app.command("register-model")
def register_model(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="TorchScript archive, or a state_dict (.pt, .pth, .safetensors) "
                                              "with --arch.", show_default=False)],
    metadata: Annotated[str, typer.Option(help='JSON, or @FILE holding it: {"name", "input_shape": [C,H,W], '
                                               '"num_classes", "train_dataset", ...} (see the README).',
                                          show_default=False)],
    arch: Annotated[str | None, typer.Option(help="small_cnn, resnet18_small or torchvision:<name>.")] = None,
    new_version: Annotated[bool, typer.Option(help="Register the next version of an existing model.")] = False,
) -> None:
    """Register a model (admin)."""
    text = Path(metadata[1:]).read_text() if metadata.startswith("@") else metadata
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"--metadata is not JSON: {exc}") from None
    with _api(ctx) as api:
        _echo_json(api.register_model(file, meta, arch=arch, new_version=new_version))


@app.command("register-dataset")
def register_dataset(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The dataset's name.", show_default=False)],
    file: Annotated[Path | None, typer.Argument(help="An .npz to upload.", show_default=False)] = None,
    source: Annotated[str | None, typer.Option(help="Instead of a file, data on the server: builtin:digits, "
                                                    "torchvision:<name> or imagefolder.")] = None,
    root: Annotated[str | None, typer.Option(help="The server-side directory of --source.")] = None,
) -> None:
    """Register a dataset (admin): an uploaded .npz, or --source data already on the server."""
    if (file is None) == (source is None):
        raise typer.BadParameter("give an .npz FILE or --source, not both and not neither")
    with _api(ctx) as api:
        if file is not None:
            _echo_json(api.register_dataset(name, file))
        else:
            _echo_json(api.register_dataset_source(name, source or "", root))


@app.command()
def keys(
    ctx: typer.Context,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write them to this file.")] = None,
) -> None:
    """The server's public keys (what `verify-receipt --public-key` takes)."""
    with _api(ctx) as api:
        document = api.keys()
    if output is None:
        _echo_json(document)
    else:
        output.write_text(json.dumps(document, indent=2))
        print(f"wrote {output}", file=sys.stderr)
