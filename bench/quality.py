"""Unlearning quality against retraining on the benchmark zoo (`python -m bench.quality`, `make bench-quality`).

For every pair of `bench.zoo.ZOO` and every seed: build the original model, then answer three requests
against a model retrained without the forget set:
- one class: do nothing, Retrain, fine-tune, gradient ascent, logit masking, the class-wise forget vector
  (universal and gated) and zero-shot smoothing;
- two classes: the same, plus vector arithmetic over the two classes' bank vectors;
- 10 % random samples: do nothing, Retrain, fine-tune, gradient ascent, the sample-wise forget vector and
  zero-shot smoothing.
The service's methods run through `bench.methods` (the workers' guarded code path); a candidate the guard
refuses is not published, so its row scores the unchanged model and the refusal is counted. Metrics are
`unlearning.metrics.unlearning_report` (UA, RA, TA, every MIA figure) and Avg. Gap to Retrain, with wall
time and work (sample passes; forward 1, forward + backward 3) per method. Rows that serve the unchanged model
and logit masking are scored (`report_from_logits`) from the original's logits, computed once per task.

Pairs × seeds run as independent tasks on `--jobs` processes of one torch thread each (2 = both cores of
the reference machine). Writes bench/results/quality.json and quality.md and, for a full run, the tables
between the markers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch
from torch import nn

from bench import methods
from bench.docs_block import replace_block
from bench.zoo import NUM_CLASSES, RECIPES, ZOO, Recipe
from unlearning.baselines import GradientAscentConfig, fine_tune, gradient_ascent
from unlearning.data import ForgetSplit, ImageSet, split_by_classes, split_by_ids
from unlearning.forget_vector import random_forget_target
from unlearning.guarded import CLASS_RETAIN_LOSS, SAMPLE_RETAIN_LOSS
from unlearning.metrics import avg_gap, predict_logits, report_from_logits, unlearning_report
from unlearning.training import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
FINE_TUNE = TrainConfig(epochs=3, lr=0.01)
RANDOM_SHARE = 0.1
RETAIN_LOSS = (CLASS_RETAIN_LOSS, SAMPLE_RETAIN_LOSS)
MAX_DROP_PTS = 3.0
"""The guard's default bound (points of retained-class accuracy), for the bench's own after-the-fact check."""
SCENARIOS = ("one class", "two classes", "10 % random")
METRICS = ("UA", "RA", "TA", "MIA", "MIA_min", "MIA_mean", "MIA_scale", "MIA_thr", "gap", "time_s", "work")


class PassCounter:
    """Counts samples through models of one type while active (copies included): with autograd on
    (fwd+bwd, 3 units) or off (1 unit). A global module hook."""

    def __init__(self, kind: type):
        self.kind = kind

    def __enter__(self) -> PassCounter:
        self.counts = {"grad": 0, "nograd": 0}

        def hook(module, inputs, output):
            if type(module) is self.kind:
                self.counts["grad" if torch.is_grad_enabled() else "nograd"] += inputs[0].shape[0]

        self._handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    @property
    def work(self) -> int:
        return 3 * self.counts["grad"] + self.counts["nograd"]


def measured(kind: type, fn):
    """(fn(), wall seconds, work in forward-pass units of models of type `kind`)."""
    with PassCounter(kind) as counter:
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    return out, seconds, counter.work


def random_split(train: ImageSet, seed: int) -> ForgetSplit:
    n = round(RANDOM_SHARE * len(train))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(1000 + seed))
    return split_by_ids(train, [train.ids[i] for i in order[:n].tolist()])


VERDICT_KEYS = ("passed", "baseline", "candidate", "bound", "forget_accuracy", "forget_target", "reason")


def guard_summary(result: methods.Guarded) -> dict:
    verdict = result.verdict or {}
    return {"published": result.passed, "attempts": len(result.attempts),
            "verdict": {k: verdict[k] for k in VERDICT_KEYS if k in verdict},
            "tried": [(a.get("guard") or a).get("passed") for a in result.attempts]}


def fails_guard(verdict: dict, forget_tolerance: float = 5.0) -> bool:
    """Whether the guard's own figures (percent; `bound` = most points of retained-class accuracy lost) say the
    candidate should not pass: too much accuracy lost, or forget accuracy above its target + tolerance."""
    if verdict.get("candidate") is None or verdict.get("baseline") is None:
        return False
    utility = verdict["candidate"] < verdict["baseline"] - verdict["bound"] - 1e-6
    forget = (verdict.get("forget_accuracy") is not None
              and verdict["forget_accuracy"] > verdict["forget_target"] + forget_tolerance + 1e-6)
    return utility or forget


@dataclass(frozen=True)
class OriginalLogits:
    """The original model's logits on the whole training and test sets, computed once per task: every row that
    serves the unchanged model (do nothing, a refused candidate) and logit masking read them instead of
    running the model again."""

    train: ImageSet
    train_logits: torch.Tensor  # (N_train, K)
    test_logits: torch.Tensor  # (N_test, K)

    def of(self, data: ImageSet) -> torch.Tensor:
        """The rows of `train_logits` for a subset of the training set, by sample id."""
        where = {sample_id: i for i, sample_id in enumerate(self.train.ids)}
        return self.train_logits[torch.tensor([where[i] for i in data.ids], dtype=torch.long)]


class Scenario:
    """One forget request on one original model: runs methods and scores them against Retrain."""

    def __init__(self, recipe: Recipe, original: nn.Module, test: ImageSet, split: ForgetSplit,
                 classes: list[int] | None, seed: int, logits: OriginalLogits):
        self.recipe, self.original, self.test, self.split = recipe, original, test, split
        self.classes, self.seed, self.kind = classes, seed, type(original)
        self.rows: dict[str, dict] = {}
        self.original_logits = (logits.of(split.forget), logits.of(split.retain), logits.test_logits)
        self.original_report = report_from_logits(split, test, *self.original_logits, classes)

    def score(self, name: str, model: nn.Module, seconds: float, work: int, *, delta=None, gate: bool = False,
              extra: dict | None = None) -> None:
        if model is self.original and delta is None:
            report = self.original_report
        else:
            report = unlearning_report(model, self.split, self.test, self.classes, delta=delta,
                                       gate_classes=self.classes if gate else None)
        self.rows[name] = {**report, "time_s": round(seconds, 3), "work": work, **(extra or {})}

    def score_masked(self) -> None:
        """The logit-masking baseline: the original's logits with the forgotten classes' set to −inf."""
        mask = torch.isin(torch.arange(NUM_CLASSES), torch.tensor(self.classes or []))
        masked = [logits.masked_fill(mask, float("-inf")) for logits in self.original_logits]
        report = report_from_logits(self.split, self.test, *masked, self.classes)
        self.rows["Logit masking"] = {**report, "time_s": 0.0, "work": 0}

    def baselines(self) -> None:
        split, seed = self.split, self.seed
        self.score("Original", self.original, 0.0, 0)
        retrained, s, w = measured(self.kind, lambda: self.recipe.fit(
            self.recipe.new_model(split.retain, seed), split.retain, seed))
        self.score("Retrain", retrained, s, w)
        tuned, s, w = measured(self.kind, lambda: fine_tune(self.original, split, FINE_TUNE))
        self.score("Fine-tune", tuned, s, w)
        target = 0.0 if self.classes else random_forget_target(self.original, split, self.test)
        ascended, s, w = measured(self.kind, lambda: gradient_ascent(
            self.original, split, GradientAscentConfig(target_forget_accuracy=target, seed=seed)))
        self.score("Gradient ascent", ascended, s, w)
        if self.classes:
            self.score_masked()

    def served(self, name: str, call, *, gate: bool = False) -> methods.Guarded:
        """Run a guarded method; score what would be served (the unchanged model when refused)."""
        result, s, w = measured(self.kind, call)
        extra = {**guard_summary(result), "info": _jsonable(result.info)}
        if result.passed and result.state_dict is not None:
            self.score(name, methods.with_weights(self.original, result.state_dict), s, w, extra=extra)
        elif result.passed:
            self.score(name, self.original, s, w, delta=result.delta, gate=gate, extra=extra)
        else:
            self.score(name, self.original, s, w, extra=extra)
        return result

    def finish(self) -> dict[str, dict]:
        for row in self.rows.values():
            row["gap"] = avg_gap(row, self.rows["Retrain"])
            row["time_ratio"] = round(row["time_s"] / max(self.rows["Retrain"]["time_s"], 1e-9), 4)
            row["work_ratio"] = round(row["work"] / max(self.rows["Retrain"]["work"], 1), 4)
        return self.rows


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 16 else f"tensor{tuple(value.shape)}"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


COMPARE_SALIENT = 0.1
"""Share of the weights JiT bounded updates in the `--compare` rows."""


def run_task(name: str, seed: int, threads: int = 1, compare: bool = False) -> dict:
    """Every scenario of one zoo pair for one seed (a task of its own process); `compare` adds the option rows
    (KL retain term, official arithmetic, JiT bounded) that decide the service's defaults."""
    torch.set_num_threads(threads)
    started, cpu_started = time.perf_counter(), time.process_time()
    recipe = RECIPES[name]
    train, test = recipe.sets(seed)
    model = recipe.new_model(train, seed)
    original, build_s, build_work = measured(type(model), lambda: recipe.fit(model, train, seed))
    logits = OriginalLogits(train, predict_logits(original, train.x), predict_logits(original, test.x))
    c1, c2 = torch.randperm(NUM_CLASSES, generator=torch.Generator().manual_seed(seed))[:2].tolist()
    out = {"pair": name, "seed": seed, "classes": [c1, c2], "build_s": round(build_s, 2),
           "train_acc": round(100 * (logits.train_logits.argmax(1) == train.y).float().mean().item(), 2),
           "test_acc": round(100 * (logits.test_logits.argmax(1) == test.y).float().mean().item(), 2),
           "scenarios": {}}

    one = Scenario(recipe, original, test, split_by_classes(train, [c1]), [c1], seed, logits)
    one.baselines()
    fv = one.served("FV", lambda: methods.forget_vector(original, one.split, test, classes=[c1]))
    one.served("FV gated", lambda: methods.forget_vector(original, one.split, test, classes=[c1], gate=True),
               gate=True)
    one.served("Zero-shot", lambda: methods.zero_shot(original, one.split, test, classes=[c1]))
    if compare:
        other = "kl" if RETAIN_LOSS[0] == "ce" else "ce"
        one.served(f"FV gated ({other} retain)", lambda: methods.forget_vector(
            original, one.split, test, classes=[c1], gate=True, retain_loss=other), gate=True)
        one.served(f"FV ({other} retain)", lambda: methods.forget_vector(
            original, one.split, test, classes=[c1], retain_loss=other))
        one.served("Zero-shot bounded", lambda: methods.zero_shot(original, one.split, test, classes=[c1],
                                                                  salient_fraction=COMPARE_SALIENT))
    out["scenarios"]["one class"] = one.finish()

    pair = sorted([c1, c2])
    two = Scenario(recipe, original, test, split_by_classes(train, pair), pair, seed, logits)
    two.baselines()
    two.served("FV", lambda: methods.forget_vector(original, two.split, test, classes=pair))
    two.served("FV gated", lambda: methods.forget_vector(original, two.split, test, classes=pair, gate=True),
               gate=True)
    # The bank: c1's vector from the one-class request, c2's learned now (its cost is the bank's, not arithmetic's).
    bank_vector, bank_s, _ = measured(type(original), lambda: methods.forget_vector(
        original, split_by_classes(train, [c2]), test, classes=[c2]))
    if fv.passed and bank_vector.passed:
        basis = {c1: fv.delta, c2: bank_vector.delta}
        two.served("FV arithmetic", lambda: methods.vector_arithmetic(original, two.split, test, basis=basis,
                                                                      classes=pair))
        two.rows["FV arithmetic"]["bank_s"] = round(bank_s, 2)
    else:
        two.score("FV arithmetic", original, 0.0, 0, extra={"published": False, "attempts": 0,
                                                             "verdict": {"reason": "a bank vector was refused"}})
    two.served("Zero-shot", lambda: methods.zero_shot(original, two.split, test, classes=pair))
    if compare and fv.passed and bank_vector.passed:
        two.served("FV arithmetic, w₀ = 0", lambda: methods.vector_arithmetic(
            original, two.split, test, basis=basis, classes=pair, coefficients="official"))
        bank, bank_s, _ = measured(type(original), lambda: full_bank(original, train, test, basis))
        two.served("FV arithmetic, official (all class vectors, w₀ = 0)", lambda: methods.vector_arithmetic(
            original, two.split, test, basis=bank, classes=pair, coefficients="official"))
        two.rows["FV arithmetic, official (all class vectors, w₀ = 0)"]["bank_s"] = round(bank_s, 2)
    if compare:
        two.served("Zero-shot bounded", lambda: methods.zero_shot(original, two.split, test, classes=pair,
                                                                  salient_fraction=COMPARE_SALIENT))
    out["scenarios"]["two classes"] = two.finish()

    rnd = Scenario(recipe, original, test, random_split(train, seed), None, seed, logits)
    rnd.baselines()
    rnd.served("FV", lambda: methods.forget_vector(original, rnd.split, test, classes=None))
    rnd.served("Zero-shot", lambda: methods.zero_shot(original, rnd.split, test, classes=None))
    if compare:
        other = "kl" if RETAIN_LOSS[1] == "ce" else "ce"
        rnd.served(f"FV ({other} retain)", lambda: methods.forget_vector(original, rnd.split, test, classes=None,
                                                                        retain_loss=other))
        rnd.served("Zero-shot bounded", lambda: methods.zero_shot(original, rnd.split, test, classes=None,
                                                                  salient_fraction=COMPARE_SALIENT))
    out["scenarios"]["10 % random"] = rnd.finish()
    out["wall_s"] = round(time.perf_counter() - started, 1)
    out["cpu_s"] = round(time.process_time() - cpu_started, 1)
    print(f"  {name} seed {seed}: {out['wall_s']} s; gaps " + "; ".join(
        f"{s}: " + ", ".join(f"{m} {r['gap']:.1f}" for m, r in rows.items() if m not in ("Original", "Retrain"))
        for s, rows in out["scenarios"].items()), flush=True)
    return out


def full_bank(original: nn.Module, train: ImageSet, test: ImageSet, have: dict[int, torch.Tensor]
              ) -> dict[int, torch.Tensor]:
    """Every class's universal vector (those in `have` reused; refused ones left out): the bank the official
    arithmetic combines."""
    bank = dict(have)
    for c in range(NUM_CLASSES):
        if c not in bank:
            vector = methods.forget_vector(original, split_by_classes(train, [c]), test, classes=[c])
            if vector.passed:
                bank[c] = vector.delta
    return bank


# --------------------------------------------------------------------------------------------------------
# Summaries, targets and tables.
# --------------------------------------------------------------------------------------------------------


def summarise(runs: list[dict]) -> dict:
    """{pair: {scenario: {method: {metric: mean over seeds, "published": n, "runs": n}}}}."""
    values: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    for run in runs:
        for scenario, rows in run["scenarios"].items():
            for method, row in rows.items():
                cell = values[run["pair"]][scenario][method]
                for key in METRICS:
                    if row.get(key) is not None and not (isinstance(row[key], float) and row[key] != row[key]):
                        cell[key].append(float(row[key]))
                cell["published"].append(1.0 if row.get("published", True) else 0.0)
                if row.get("published") and row.get("gap") is not None and row["gap"] == row["gap"]:
                    cell["gap_published"].append(float(row["gap"]))  # Avg. Gap over the runs it passed
    return {p: {s: {m: {k: (statistics.mean(v) if k != "published" else int(sum(v))) for k, v in cell.items()}
                    | {"runs": len(cell["published"])} for m, cell in ms.items()}
                for s, ms in ss.items()} for p, ss in values.items()}


def guard_counts(runs: list[dict]) -> dict:
    """Guarded calls: published, refused, and published candidates that fail the guard, by the guard's own
    verdict (candidate below its bound) and by the bench's check (retained-class TA more than the bound
    below the original's)."""
    counts = {"calls": 0, "published": 0, "refused": 0, "published_failing_verdict": 0,
              "published_ta_drop_over_bound": 0, "by_method": defaultdict(lambda: [0, 0])}
    for run in runs:
        for scenario, rows in run["scenarios"].items():
            for method, row in rows.items():
                if "published" not in row or row.get("attempts", 1) == 0:
                    continue
                counts["calls"] += 1
                key = f"{method} ({scenario})"
                counts["by_method"][key][0 if row["published"] else 1] += 1
                if not row["published"]:
                    counts["refused"] += 1
                    continue
                counts["published"] += 1
                if fails_guard(row.get("verdict") or {}):
                    counts["published_failing_verdict"] += 1
                if row["TA"] is not None and rows["Original"]["TA"] - row["TA"] > MAX_DROP_PTS:
                    counts["published_ta_drop_over_bound"] += 1
    counts["by_method"] = {k: {"published": v[0], "refused": v[1]} for k, v in counts["by_method"].items()}
    return counts


class _Row(dict):
    """A summary row whose missing metrics read as NaN (a metric no seed could measure)."""

    def __missing__(self, key):
        return float("nan")


def targets(pair: dict) -> list[tuple[str, str, bool | str]]:
    """§3 targets of one pair's summary: (target, measured, met); met "vacuous" = held only because the guard
    refused every candidate."""
    pair = {s: {m: _Row(r) for m, r in rows.items()} for s, rows in pair.items()}
    out = []
    for scenario in ("one class", "two classes"):
        rows = pair[scenario]
        retrain_ta = rows["Retrain"]["TA"]
        for method in ("FV", "FV gated"):
            r = rows[method]
            ok = r["UA"] >= 99 and abs(r["TA"] - retrain_ta) <= 2 and r["MIA"] >= 95
            out.append((f"{method}, {scenario}: UA ≥ 99, TA within 2 of Retrain, MIA ≥ 95",
                        f"UA {r['UA']:.1f}, TA {r['TA']:.1f} vs {retrain_ta:.1f}, MIA {r['MIA']:.1f} "
                        f"(min {r['MIA_min']:.1f}, thr {r['MIA_thr']:.1f}); published {r['published']}/{r['runs']}",
                        ok))
    rows = pair["10 % random"]
    r, o = rows["FV"], rows["Original"]
    out.append(("FV, 10 % random: Avg. Gap ≤ 3 and below do-nothing",
                f"{r['gap']:.2f} vs do-nothing {o['gap']:.2f}; published {r['published']}/{r['runs']}",
                r["gap"] <= 3 and r["gap"] < o["gap"]))
    for scenario in SCENARIOS:
        z = pair[scenario]["Zero-shot"]
        drop = pair[scenario]["Original"]["TA"] - z["TA"]
        ok = drop <= MAX_DROP_PTS and (z["published"] == 0 or z["gap_published"] <= 6)
        ok = "vacuous" if ok and z["published"] == 0 else ok
        out.append((f"Zero-shot, {scenario}: never below the guard; Avg. Gap ≤ 6 where it passes",
                    f"published {z['published']}/{z['runs']}; gap where published "
                    f"{_f(z.get('gap_published'), 2)}; served TA drop {drop:.1f}", ok))
    return out


def _f(value, digits=1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def pair_table(name: str, pair: dict, runs: list[dict]) -> str:
    recipe = RECIPES[name]
    mine = [r for r in runs if r["pair"] == name]
    lines = [f"#### {name}: {recipe.description}", "",
             f"Original: train accuracy {statistics.mean(r['train_acc'] for r in mine):.1f}, test accuracy "
             f"{statistics.mean(r['test_acc'] for r in mine):.1f}; seeds {', '.join(str(r['seed']) for r in mine)}; "
             f"wall time {sum(r['wall_s'] for r in mine):.0f} s, CPU time {sum(r['cpu_s'] for r in mine):.0f} s.", ""]
    for scenario in SCENARIOS:
        lines += [f"*{scenario}*", "",
                  "| Method | UA | RA | TA | MIA | MIA min / mean | MIA γ=scale | MIA thr | Avg. Gap | Time (s) | "
                  "Work / Retrain | published |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for method, m in pair[scenario].items():
            work = m.get("work", 0) / max(pair[scenario]["Retrain"].get("work", 1), 1)
            published = f"{m['published']}/{m['runs']}" if method not in (
                "Original", "Retrain", "Fine-tune", "Gradient ascent", "Logit masking") else ""
            lines.append(
                f"| {method} | {_f(m.get('UA'))} | {_f(m.get('RA'))} | {_f(m.get('TA'))} | {_f(m.get('MIA'))} | "
                f"{_f(m.get('MIA_min'))} / {_f(m.get('MIA_mean'))} | {_f(m.get('MIA_scale'))} | "
                f"{_f(m.get('MIA_thr'))} | {_f(m.get('gap'), 2)} | {_f(m.get('time_s'), 2)} | {work:.3f} | "
                f"{published} |")
        lines.append("")
    return "\n".join(lines)


def targets_table(summary: dict, names: list[str]) -> str:
    lines = ["| Pair | Target | Measured (mean over seeds) | Met? |", "|---|---|---|---|"]
    for name in names:
        for target, measured_, ok in targets(summary[name]):
            verdict = {True: "yes", False: "**no**", "vacuous": "yes, vacuously: every candidate refused"}[ok]
            lines.append(f"| {name} | {target} | {measured_} | {verdict} |")
    return "\n".join(lines) + "\n"


def report_text(report: dict) -> str:
    summary, runs = report["summaries"], report["runs"]
    tuned = [r.name for r in ZOO if not r.held_out and r.name in summary]
    held = [r.name for r in ZOO if r.held_out and r.name in summary]
    g = report["guard"]
    load = report["machine"].get("load_avg_end", [float("nan")] * 3)
    command = f"`{report['command'].strip()}`"
    command += " (`make bench-quality`)" if command == "`python -m bench.quality`" else ""
    text = [f"Command: {command}; code path of the service's methods: {report['code_path']}; "
            f"{report['jobs']} processes × {report['threads']} torch thread; total wall time "
            f"{report['wall_s']:.0f} s ({report['wall_s'] / 60:.1f} min) on {report['machine']['cpus']} CPUs "
            f"({report['machine']['cpu']}; load average at the end {load[2]:.1f} over 15 min); "
            f"CPU time {report['cpu_s']:.0f} s, i.e. "
            f"{report['dedicated_wall_s'] / 60:.1f} min on {report['jobs']} cores nobody else uses.", "",
            f"Guarded calls: {g['calls']}; published {g['published']}, refused {g['refused']}; published "
            f"candidates that the guard's own figures fail: **{g['published_failing_verdict']}**; published candidates "
            f"whose retained-class TA (bench check, test split) is more than {MAX_DROP_PTS:.0f} points under the "
            f"original's: {g['published_ta_drop_over_bound']}.", "",
            "### Targets (§3), tuned pairs", "", targets_table(summary, tuned)]
    if held:
        text += ["### Targets, held-out pair (never tuned on)", "", targets_table(summary, held)]
    text += ["### Results per pair (mean over seeds)", ""]
    text += [pair_table(name, summary[name], runs) for name in tuned]
    if held:
        text += ["### Held-out pair (reported apart; no method setting was chosen on it)", ""]
        text += [pair_table(name, summary[name], runs) for name in held]
    return "\n".join(text) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: seed 0, every pair but ResNet-18")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pairs", nargs="+", choices=list(RECIPES), default=None)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one torch thread each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--compare", action="store_true",
                        help="add the option rows (other retain term, official arithmetic, JiT bounded); "
                             "results go to quality-compare.*")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only rebuild the tables (and the docs block, for a full run) from a saved report")
    args = parser.parse_args(argv)
    if args.render is not None:
        report = json.loads(args.render.read_text())
        report["summaries"], report["guard"] = summarise(report["runs"]), guard_counts(report["runs"])
        text = report_text(report)
        args.render.with_suffix(".md").write_text(text)
        if args.render.stem == "quality":
            replace_block("bench-quality", text)
        print(text)
        return 0
    seeds = [0] if args.quick else args.seeds
    names = args.pairs or [r.name for r in ZOO if not (args.quick and r.arch == "resnet18_small")]
    # Longest tasks first, so the two processes finish together.
    order = sorted(((n, s) for n in names for s in seeds), key=lambda t: (RECIPES[t[0]].arch != "resnet18_small",
                                                                       t[1]))
    started = time.perf_counter()
    print(f"zoo: {len(order)} tasks on {args.jobs} processes; service methods via {methods.code_path()}", flush=True)
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            runs = list(pool.map(run_task, *zip(*order, strict=True), [args.threads] * len(order),
                                 [args.compare] * len(order)))
    else:
        runs = [run_task(n, s, args.threads, args.compare) for n, s in order]
    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "cpus": os.cpu_count(), "cpu": _cpu_name(),
                    "load_avg_end": [round(v, 2) for v in os.getloadavg()]},
        "command": "python -m bench.quality " + " ".join(argv if argv is not None else sys.argv[1:]),
        "code_path": methods.code_path(), "jobs": args.jobs, "threads": args.threads, "seeds": seeds,
        "wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(sum(r["cpu_s"] for r in runs), 1),
        "dedicated_wall_s": round(makespan([r["cpu_s"] for r in runs], args.jobs), 1),
        "pairs": {n: {"description": RECIPES[n].description, "held_out": RECIPES[n].held_out} for n in names},
        "guard": guard_counts(runs), "summaries": summarise(runs), "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    full = not args.quick and not args.compare and args.pairs is None and len(seeds) >= 3
    stem = "quality" if full else "quality-compare" if args.compare else "quality-quick"
    (RESULTS / f"{stem}.json").write_text(json.dumps(_jsonable(report), indent=1))  # first: tables derive from it
    text = report_text(report)
    (RESULTS / f"{stem}.md").write_text(text)
    if full:
        replace_block("bench-quality", text)
    print(text)
    return 0


def makespan(seconds: list[float], workers: int) -> float:
    """Wall time of tasks taking `seconds` each on `workers` dedicated cores, longest first to the least busy:
    what this run would take on a machine nobody else uses (this one is shared)."""
    loads = [0.0] * max(workers, 1)
    for s in sorted(seconds, reverse=True):
        loads[loads.index(min(loads))] += s
    return max(loads)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    raise SystemExit(main())
