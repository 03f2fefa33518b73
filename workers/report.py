"""report.png: a succeeded forget request as a picture, rendered by the worker at the end of its job.

Top left, δ as an image (for a weight edit, a note naming the weights before and after); top right, per-class
accuracy on held-out images before and after, the forgotten classes marked; below, a few forget and retain
training images as given and as the model receives them after (x + δ, clipped, where δ applies), with the
predictions before and after. Everything is measured as served: each state's weights, δ and gate.
`save_report` stores it for every request of the batch (`GET /v1/forget-requests/{id}/report.png`); a report
that cannot be rendered is logged and never fails the request.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg  # the Agg backend: no display, bytes only
from matplotlib.figure import Figure

from models_store import Store
from models_store.state import ServedState
from unlearnd.runtime import load_classifier
from unlearnd.settings import Settings
from unlearning import ImageSet
from unlearning.evaluation import accuracy, apply_delta, perturbed_logits
from workers.methods.common import applied_delta, load_under_edit
from workers.publishing import Outcome

log = structlog.stdlib.get_logger(__name__)

SAMPLES_SHOWN = 4
"""Forget images shown, and as many retain images."""


@dataclass(frozen=True)
class Served:
    """A model as one served state serves it: its weights, the δ in force and the gate."""

    model: torch.nn.Module
    delta: torch.Tensor | None
    gate: list[int] | None

    @classmethod
    def of(cls, store: Store, state: ServedState, model: torch.nn.Module) -> Served:
        gate = None if state.gate_classes is None else list(state.gate_classes)
        return cls(model, applied_delta(store, state.artifacts), gate)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> list[int]:
        return perturbed_logits(self.model, x.to(self.device), self.delta, self.gate).argmax(1).tolist()

    @torch.no_grad()
    def received(self, x: torch.Tensor) -> torch.Tensor:
        """What the model receives for x: x + δ (clipped) where δ applies, else x."""
        if self.delta is None:
            return x
        perturbed = apply_delta(x, self.delta)
        if not self.gate:
            return perturbed
        gated = torch.isin(self.model(x.to(self.device)).argmax(1).cpu(), torch.tensor(self.gate))
        return torch.where(gated[:, None, None, None], perturbed, x)

    def per_class_accuracy(self, data: ImageSet, num_classes: int) -> list[float]:
        """Accuracy (%) on each class's images; nan for a class without images."""
        return [100 * accuracy(self.model, data.x[data.y == c], data.y[data.y == c], self.delta,
                               gate_classes=self.gate) for c in range(num_classes)]


@dataclass(frozen=True)
class Example:
    """One training image: as given, as the model receives it after, its label and the predictions."""

    kind: str  # "forget" or "retain"
    x: np.ndarray  # (C, H, W) in [0, 1]
    received_after: np.ndarray
    label: int
    before: int
    after: int


@dataclass(frozen=True)
class ReportData:
    """Everything the picture shows, already measured."""

    title: str
    subtitle: str
    delta: np.ndarray | None  # (C, H, W): δ served after; None for a weight edit without vectors
    delta_note: str
    class_names: list[str]
    forgotten: list[int]
    accuracy_before: list[float]
    accuracy_after: list[float]
    accuracy_on: str
    examples: list[Example]


def save_report(store: Store, settings: Settings, outcome: Outcome, batch: list[dict[str, Any]]) -> None:
    """Render the report and store it for every request of the batch; log, never raise, when that fails."""
    try:
        png = draw_report(measure_report(store, settings, outcome, batch))
        for member in batch:
            store.put_report(member["id"], png)
    except Exception:  # a picture must never fail a request whose forgetting is published
        log.exception("report.png not rendered", batch=[r["id"] for r in batch])


def measure_report(store: Store, settings: Settings, outcome: Outcome, batch: list[dict[str, Any]]) -> ReportData:
    """What the report shows for this outcome: both states' weights loaded and measured as served."""
    before_state, after_state = outcome.state_before, outcome.state_after
    loaded = load_under_edit(store, before_state, settings)
    after_model = loaded.model if after_state.weights_sha256 == before_state.weights_sha256 else load_classifier(
        store, loaded.record, after_state.weights_sha256, loaded.device)
    before, after = Served.of(store, before_state, loaded.model), Served.of(store, after_state, after_model)
    record, train = loaded.record, loaded.train
    held_out = loaded.test if loaded.test is not None and len(loaded.test) else None
    measured_on = train if held_out is None else held_out
    num_classes = record["num_classes"]
    forgotten = sorted(after_state.classes_gone)
    examples = [*_examples("forget", _forget_rows(train, batch), train, before, after),
                *_examples("retain", _retain_rows(train, after_state), train, before, after)]
    result = outcome.result
    return ReportData(
        title=_title(record["name"], batch, result, before_state, after_state),
        subtitle=_metrics_line(result.get("metrics", {})),
        delta=None if after.delta is None else after.delta.detach().cpu().numpy(),
        delta_note=_delta_note(result, before_state, after_state, after),
        class_names=[str(n) for n in record.get("class_names") or range(num_classes)],
        forgotten=forgotten,
        accuracy_before=before.per_class_accuracy(measured_on, num_classes),
        accuracy_after=after.per_class_accuracy(measured_on, num_classes),
        accuracy_on="held-out test images" if held_out is not None else "training images (no test set)",
        examples=examples,
    )


def _forget_rows(train: ImageSet, batch: list[dict[str, Any]]) -> list[int]:
    """Up to SAMPLES_SHOWN training rows the batch forgets: its samples, or its classes taken in turn."""
    if batch[0]["classes"] is None:
        wanted = set().union(*(r["samples"] for r in batch))
        return [i for i, sample_id in enumerate(train.ids) if sample_id in wanted][:SAMPLES_SHOWN]
    classes = sorted(set().union(*(r["classes"] for r in batch)))
    per_class = [(train.y == c).nonzero().flatten().tolist() for c in classes]
    turns = [rows[k] for k in range(SAMPLES_SHOWN) for rows in per_class if k < len(rows)]
    return turns[:SAMPLES_SHOWN]


def _retain_rows(train: ImageSet, state: ServedState) -> list[int]:
    """Up to SAMPLES_SHOWN training rows nothing forgets, of different classes."""
    gone_ids, seen, rows = set(state.forgotten_samples), set(state.classes_gone), []
    for i, (label, sample_id) in enumerate(zip(train.y.tolist(), train.ids, strict=True)):
        if label not in seen and sample_id not in gone_ids:
            seen.add(label)
            rows.append(i)
            if len(rows) == SAMPLES_SHOWN:
                break
    return rows


def _examples(kind: str, rows: list[int], train: ImageSet, before: Served, after: Served) -> list[Example]:
    if not rows:
        return []
    x = train.x[rows]
    received = after.received(x)
    return [Example(kind, x[j].numpy(), received[j].numpy(), int(train.y[row]), b, a)
            for j, (row, b, a) in enumerate(zip(rows, before.predict(x), after.predict(x), strict=True))]


def _title(model: str, batch: list[dict[str, Any]], result: dict[str, Any], before: ServedState,
           after: ServedState) -> str:
    first = batch[0]
    what = (f"classes {sorted(set().union(*(r['classes'] for r in batch)))}" if first["classes"] is not None
            else f"{len(set().union(*(r['samples'] for r in batch)))} samples")
    requests = first["id"] + (f" (+{len(batch) - 1} coalesced)" if len(batch) > 1 else "")
    how = result.get("method", first["method"]) + (f" / {result['strategy']}" if result.get("strategy") else "")
    return (f"{model}: forget {what} · {requests} · {how} · "
            f"served state v{before.state_version} → v{after.state_version}")


def _metrics_line(metrics: dict[str, Any]) -> str:
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    lines = []
    for names in (("UA", "RA", "TA", "TA_forgotten"), ("MIA", "MIA_mean", "MIA_thr")):  # which MIA: benchmarks.md
        parts = [f"{name} {before[name]:.1f} → {after[name]:.1f}" for name in names
                 if before.get(name) is not None and after.get(name) is not None]
        lines += ["  ·  ".join(parts)] if parts else []
    return "\n".join(lines) + ("   (%, as served)" if lines else "")


def _delta_note(result: dict[str, Any], before: ServedState, after: ServedState, served: Served) -> str:
    lines = []
    if after.weights_sha256 != before.weights_sha256:
        lines.append(f"{result.get('method', 'the method')} edited the weights: "
                     f"{before.weights_sha256[:12]} → {after.weights_sha256[:12]}")
    if served.delta is None:
        return "\n".join([*lines, "no δ: inputs are served unchanged"])
    flat = served.delta.detach().flatten()
    where = f"gated: on inputs predicted as {served.gate}" if served.gate else "on every input"
    recomputed = " recomputed for the new weights" if lines else ""
    return "\n".join([*lines, f"δ served after{recomputed}", where,
                       f"‖δ‖∞ = {flat.abs().max():.3f}, ‖δ‖₂ = {flat.norm():.3f}"])


def _image(array: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """(C, H, W) in [0, 1] as imshow's array and arguments: grey for one channel, RGB for three."""
    if array.shape[0] == 3:
        return np.clip(array.transpose(1, 2, 0), 0, 1), {}
    return array[0], {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}


def _draw_delta(fig: Figure, ax: Any, data: ReportData) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if data.delta is None:
        ax.set_frame_on(False)
        ax.text(0.5, 0.5, data.delta_note, ha="center", va="center", fontsize=11, transform=ax.transAxes)
        return
    bound = float(np.abs(data.delta).max()) or 1.0
    if data.delta.shape[0] == 3:  # colour δ: mid-grey is 0, brighter channels are positive
        ax.imshow(np.clip(0.5 + data.delta.transpose(1, 2, 0) / (2 * bound), 0, 1))
    else:
        shown = ax.imshow(data.delta[0], cmap="RdBu_r", vmin=-bound, vmax=bound)
        fig.colorbar(shown, ax=ax, shrink=0.8, label="δ (pixel units)")
    ax.set_title(data.delta_note, fontsize=9)


def _draw_accuracy(ax: Any, data: ReportData) -> None:
    positions = np.arange(len(data.class_names))
    ax.bar(positions - 0.2, data.accuracy_before, 0.4, label="before", color="#9e9e9e")
    ax.bar(positions + 0.2, data.accuracy_after, 0.4, label="after", color="#1f77b4")
    for c in data.forgotten:
        ax.axvspan(c - 0.5, c + 0.5, color="#d62728", alpha=0.12, lw=0)
        if not np.isnan(data.accuracy_after[c]):
            ax.annotate(f"{data.accuracy_after[c]:.0f}", (c + 0.2, data.accuracy_after[c]), ha="center",
                        va="bottom", fontsize=8, color="#d62728")
    step = max(1, len(positions) // 25)  # keep many classes readable
    ax.set_xticks(positions[::step], data.class_names[::step], rotation=90 if len(positions) > 12 else 0)
    for tick in ax.get_xticklabels():
        if data.class_names.index(tick.get_text()) in data.forgotten:
            tick.set_color("#d62728")
            tick.set_fontweight("bold")
    ax.set_ylim(0, 105)
    ax.set_ylabel(f"accuracy (%) on {data.accuracy_on}")
    ax.set_title("per-class accuracy before / after (forgotten classes shaded red)", fontsize=10)
    ax.legend(loc="lower right", fontsize=9)


def draw_report(data: ReportData) -> bytes:
    """The PNG (about 1200 × 860 px) of the report."""
    fig = Figure(figsize=(12, 8.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(f"{data.title}\n{data.subtitle}", fontsize=11)
    top, bottom = fig.add_gridspec(2, 1, height_ratios=[2.4, 2])  # separate grids: the colorbar is top only
    panels = top.subgridspec(1, 2, width_ratios=[3, 5])
    _draw_delta(fig, fig.add_subplot(panels[0]), data)
    _draw_accuracy(fig.add_subplot(panels[1]), data)
    images = bottom.subgridspec(2, max(2 * SAMPLES_SHOWN, len(data.examples)))
    names = data.class_names
    for j, example in enumerate(data.examples):
        for row, (array, caption) in enumerate([
            (example.x, f"{names[example.label]} · before → {names[example.before]}"),
            (example.received_after, f"after → {names[example.after]}"),
        ]):
            ax = fig.add_subplot(images[row, j])
            image, style = _image(array)
            ax.imshow(image, **style)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(caption, fontsize=8)
            if row == 0:
                ax.set_title(example.kind, fontsize=9, color="#d62728" if example.kind == "forget" else "#2ca02c")
            if j == 0:
                ax.set_ylabel("as given" if row == 0 else "as received after", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
