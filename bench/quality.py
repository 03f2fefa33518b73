"""Unlearning quality and cost against retraining, on scikit-learn digits (`python -m bench.quality`).

For each scenario and seed: train the original model, then run Original (do nothing), Retrain, Fine-tune,
Gradient ascent, Forget vector (FV), FV arithmetic (two classes) and JiT; measure UA, RA, TA, MIA and Avg. Gap
to Retrain (percent), wall time and its ratio to Retrain's (same run), and work in forward-pass equivalents
(fwd+bwd = 3), then project each method's recipe to CIFAR-10 / ResNet-18 scale with a ResNet-18 batch time
measured here. Writes bench/results/quality.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

from unlearning import (
    ImageSet,
    NormalizedClassifier,
    TrainConfig,
    build_model,
    learn_forget_vector,
    load_digits_split,
    split_by_classes,
    split_by_ids,
    train_classifier,
)
from unlearning.arithmetic import CoefficientConfig, learn_coefficients
from unlearning.baselines import GradientAscentConfig, fine_tune, gradient_ascent, retrain
from unlearning.data import channel_stats
from unlearning.forget_vector import CLASS_WISE, SAMPLE_WISE, random_forget_target
from unlearning.metrics import avg_gap, unlearning_report
from unlearning.smoothing import CLASS_FORGET_TARGET, SmoothingConfig, accuracy_at_most, lipschitz_smoothing

RESULTS = Path(__file__).parent / "results"
TRAIN = TrainConfig(epochs=15, seed=0)
SMALL_TRAIN = TrainConfig(epochs=60, seed=0)
"""Harder variant: 300 training images, trained long enough to fit them all (train accuracy 100 %), so a
retrained model gets clearly fewer forget samples right than the original."""
FINE_TUNE = TrainConfig(epochs=3, lr=0.01)
RETAIN_SUBSAMPLE = 0.25
"""Retain share of the cheaper forget-vector rows ("r=25 %"), to measure the cost/quality trade-off."""
CIFAR = {"n_train": 50_000, "n_forget_class": 5_000, "n_forget_random": 5_000, "retrain_epochs": 182}


class PassCounter:
    """Counts samples through top-level classifiers while active: with autograd on (fwd+bwd, 3 units) or off
    (1 unit). A global module hook, so the copies a method makes of the model are counted too."""

    def __enter__(self) -> PassCounter:
        self.counts = {"grad": 0, "nograd": 0}

        def hook(module, inputs, output):
            if isinstance(module, NormalizedClassifier):
                self.counts["grad" if torch.is_grad_enabled() else "nograd"] += inputs[0].shape[0]

        self._handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    @property
    def work(self) -> int:
        return 3 * self.counts["grad"] + self.counts["nograd"]


def measured(fn):
    """(fn(), wall seconds, work in forward-pass units)."""
    with PassCounter() as counter:
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    return out, seconds, counter.work


def new_model(arch: str, channels: int, mean, std, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return NormalizedClassifier(build_model(arch, channels, 10), mean, std)


def subsample(data: ImageSet, n: int, seed: int) -> ImageSet:
    mask = torch.zeros(len(data), dtype=torch.bool)
    mask[torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]] = True
    return data.subset(mask)


def run_methods(original, build, split, test, classes, seed, bank=None, train_cfg=TRAIN) -> dict[str, dict]:
    """Every method on one forget request; returns {method: metrics + time_s + work}."""
    rows: dict[str, dict] = {}

    def record(name, model, seconds, work, delta=None, extra=None, reads=(0.0, 1.0, None), unit=3):
        """reads: (share of D_f, share of D_r, cap) read per epoch; unit: work per sample read (fwd+bwd = 3)."""
        rows[name] = {**unlearning_report(model, split, test, classes, delta=delta), "time_s": round(seconds, 3),
                      "work": work, "reads": list(reads), "unit": unit, **(extra or {})}

    record("Original", original, 0.0, 0)
    retrained, seconds, work = measured(lambda: retrain(build, split, replace(train_cfg, seed=seed)))
    record("Retrain", retrained, seconds, work)

    tuned, seconds, work = measured(lambda: fine_tune(original, split, FINE_TUNE))
    record("Fine-tune", tuned, seconds, work)

    # The service's rule: class-wise aims at forget accuracy 0, random at the original's held-out accuracy.
    target = 0.0 if classes else random_forget_target(original, split, test)
    ascended, seconds, work = measured(
        lambda: gradient_ascent(original, split, GradientAscentConfig(target_forget_accuracy=target)))
    record("Gradient ascent", ascended, seconds, work, reads=(1.0, 0.0, None))

    base = CLASS_WISE if classes else SAMPLE_WISE
    variants = [("Forget vector", 1.0), (f"FV r={RETAIN_SUBSAMPLE:.0%}", RETAIN_SUBSAMPLE)]
    for name, fraction in variants:
        cfg = replace(base, target_forget_accuracy=target, retain_fraction=fraction, seed=seed)
        vector, seconds, work = measured(lambda: learn_forget_vector(original, split, cfg))
        record(name, original, seconds, work, vector.delta,
               {"epochs": vector.epochs, "stop": vector.stop_reason, "delta_l2": round(float(vector.delta.norm()), 3)},
               reads=(1.0, fraction, None))

    if bank is not None:
        for name, fraction in [("FV arithmetic", 1.0), (f"FV arith. r={RETAIN_SUBSAMPLE:.0%}", RETAIN_SUBSAMPLE)]:
            cfg = CoefficientConfig(retain_fraction=fraction, seed=seed)
            combined, seconds, work = measured(lambda: learn_coefficients(original, split, bank, cfg))
            record(name, original, seconds, work, combined.delta,
                   {"epochs": len(combined.history), "stop": combined.stop_reason, "weights": combined.weights},
                   reads=(1.0, fraction, cfg.max_train_samples))

    jit_target = CLASS_FORGET_TARGET if classes else target
    jit_cfg = SmoothingConfig(seed=seed)
    smoothed, seconds, work = measured(lambda: lipschitz_smoothing(
        original, split.forget.x, jit_cfg,
        stop=accuracy_at_most(split.forget.x, split.forget.y, jit_target)))
    jit_model = copy.deepcopy(original)
    jit_model.load_state_dict(smoothed.state_dict)
    record("JiT", jit_model, seconds, work, extra={"steps": smoothed.steps, "stop": smoothed.stop_reason},
           reads=(1.0, 0.0, None), unit=3 + jit_cfg.n_samples)

    for row in rows.values():
        row["gap"] = avg_gap(row, rows["Retrain"])
        row["time_ratio"] = round(row["time_s"] / rows["Retrain"]["time_s"], 4)
        row["work_ratio"] = round(row["work"] / rows["Retrain"]["work"], 4)
    return rows


def scenario(name, train, test, seeds, requests, arch="small_cnn", with_bank=False, train_cfg=TRAIN,
             log=print) -> list[dict]:
    """requests: list of ("classes", [c...]) or ("random", fraction)."""
    out = []
    mean, std = channel_stats(train.x)
    channels = train.x.shape[1]
    for seed in seeds:
        def build(seed=seed):
            return new_model(arch, channels, mean, std, seed)

        original = train_classifier(build(), train, replace(train_cfg, seed=seed))
        for kind, value in requests:
            if kind == "classes":
                split, classes = split_by_classes(train, value), value
            else:
                n = round(len(train) * value)
                ids = [train.ids[i] for i in torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]]
                split, classes = split_by_ids(train, ids), None
            bank = None
            if with_bank and classes and len(classes) > 1:
                bank = {c: learn_forget_vector(original, split_by_classes(train, [c]), replace(CLASS_WISE, seed=seed)).delta
                        for c in classes}
            rows = run_methods(original, build, split, test, classes, seed, bank, train_cfg)
            out.append({"scenario": name, "seed": seed, "request": [kind, value], "arch": arch,
                        "n_forget": len(split.forget), "n_retain": len(split.retain), "methods": rows})
            log(f"  {name} seed={seed} {kind}={value}: " + ", ".join(
                f"{m} gap {r['gap']:.1f} ({r['time_s']:.1f}s)" for m, r in rows.items()))
    return out


def summarise(runs: list[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """{method: {metric: (mean, std)}} over every run of a scenario (classes and seeds pooled)."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for method, row in run["methods"].items():
            for key in ("UA", "RA", "TA", "TA_forgotten", "MIA", "gap", "time_s", "time_ratio", "work", "work_ratio"):
                if row.get(key) is not None:
                    values[method][key].append(float(row[key]))
    return {m: {k: (statistics.mean(v), statistics.pstdev(v)) for k, v in metrics.items()}
            for m, metrics in values.items()}


def markdown(title: str, summary: dict) -> str:
    lines = [f"### {title}", "",
             "| Method | UA | RA | TA | MIA | Avg. Gap | Time (s) | Time / Retrain | Work / Retrain |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method, m in summary.items():
        def cell(key, digits=1):
            mean, std = m.get(key, (float("nan"), 0.0))
            return f"{mean:.{digits}f} ± {std:.{digits}f}"
        lines.append(f"| {method} | {cell('UA')} | {cell('RA')} | {cell('TA')} | {cell('MIA')} | {cell('gap', 2)} | "
                     f"{cell('time_s', 2)} | {m['time_ratio'][0]:.3f} | {m['work_ratio'][0]:.3f} |")
    return "\n".join(lines) + "\n"


def resnet18_seconds_per_sample(batch: int = 64, repeats: int = 3) -> float:
    """Measured fwd+bwd+step time per 3×32×32 image of ResNet-18 (small-input variant) here, batch 64."""
    model = build_model("resnet18_small", 3, 10).train()
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) / batch


def samples_read(reads: list, n_forget: int, n_retain: int) -> float:
    """Samples a method reads per epoch: share of D_f + share of D_r, capped."""
    forget_share, retain_share, cap = reads
    total = forget_share * n_forget + retain_share * n_retain
    return total if cap is None else min(cap, total)


def projection(runs: list[dict], kind: str, per_sample_s: float) -> dict[str, dict]:
    """Each method's measured work projected to CIFAR-10 sizes, as a share of Retrain's (182 epochs on D_r).

    Two bounds, because how many epochs a method needs at that scale is not measurable here:
    - upper ("same epochs"): as many passes over its data as on digits, so work grows with the samples it
      reads per epoch (stopping-rule checks, which the core caps, are scaled too: an over-count);
    - lower ("same steps"): as many optimiser steps of the same batch size as on digits (the losses are batch
      means, so a step does the same whatever the data size), but at least one pass over its data.
    Hours = work / 3 × the measured ResNet-18 fwd+bwd time per image.
    """
    n_forget = CIFAR["n_forget_class"] if kind == "classes" else CIFAR["n_forget_random"]
    n_retain = CIFAR["n_train"] - n_forget
    retrain_work = 3 * CIFAR["retrain_epochs"] * n_retain
    out = {}
    for method in [m for m in runs[0]["methods"] if m not in ("Original", "Retrain")]:
        upper, lower = [], []
        for run in runs:
            row = run["methods"].get(method)
            if row is None:
                continue
            scale = samples_read(row["reads"], n_forget, n_retain) / samples_read(
                row["reads"], run["n_forget"], run["n_retain"])
            upper.append(row["work"] * scale)
            lower.append(max(row["work"], row["unit"] * samples_read(row["reads"], n_forget, n_retain)))
        if upper:
            up, low = statistics.mean(upper), statistics.mean(lower)
            out[method] = {"share_upper": up / retrain_work, "share_lower": low / retrain_work,
                           "hours_upper": up / 3 * per_sample_s / 3600, "hours_lower": low / 3 * per_sample_s / 3600}
    hours = retrain_work / 3 * per_sample_s / 3600
    out["Retrain"] = {"share_upper": 1.0, "share_lower": 1.0, "hours_upper": hours, "hours_lower": hours}
    return out


TITLES = {
    "classwise": "Class-wise, one class at a time",
    "random": "10 % random, plain digits (1,437 training images)",
    "random_small": "10 % random, harder variant (300 training images, fitted to 100 %)",
    "two_class": "Two classes at once (2 and 7), FV arithmetic over class vectors",
    "resnet18": "ResNet-18 (small-input variant) on digits, class 3",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 class, 1 seed, no ResNet-18 run: a smoke run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest for these tiny models on a shared 2-core machine)")
    parser.add_argument("--no-resnet", action="store_true", help="skip the ResNet-18 run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [0] if args.quick else args.seeds
    classes = [3] if args.quick else args.classes
    train, test = load_digits_split(test_fraction=0.2, seed=0)
    small_train = subsample(train, 300, seed=0)
    started = time.perf_counter()
    results: dict[str, list[dict]] = {}
    print("class-wise forgetting", flush=True)
    results["classwise"] = scenario("classwise", train, test, seeds, [("classes", [c]) for c in classes])
    print("10 % random forgetting (plain digits)", flush=True)
    results["random"] = scenario("random", train, test, seeds, [("random", 0.1)])
    print("10 % random forgetting (harder: 300 training images)", flush=True)
    results["random_small"] = scenario("random_small", small_train, test, seeds, [("random", 0.1)],
                                       train_cfg=SMALL_TRAIN)
    print("two-class forgetting through vector arithmetic", flush=True)
    results["two_class"] = scenario("two_class", train, test, seeds, [("classes", [2, 7])], with_bank=True)
    if not (args.quick or args.no_resnet):
        print("ResNet-18 (small-input variant) on digits, class 3", flush=True)
        results["resnet18"] = scenario("resnet18", train, test, seeds[:1], [("classes", [3])], arch="resnet18_small",
                                       train_cfg=TrainConfig(epochs=8))

    per_sample = resnet18_seconds_per_sample()
    summaries = {k: summarise(v) for k, v in results.items()}
    projections = {"classes": projection(results["classwise"], "classes", per_sample),
                   "two_classes": projection(results["two_class"], "classes", per_sample),
                   "random": projection(results["random"], "random", per_sample)}
    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "cpu": platform.processor() or platform.machine()},
        "command": "python -m bench.quality " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seeds": seeds, "classes": classes, "wall_s": round(time.perf_counter() - started, 1),
        "resnet18_fwd_bwd_s_per_sample_32x32": per_sample,
        "summaries": summaries, "projection_cifar10_resnet18": projections, "runs": results,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = "quality-quick" if args.quick else "quality"
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=1))
    text = "\n".join(markdown(TITLES[k], s) for k, s in summaries.items())
    text += ("\n### Projected to CIFAR-10 / ResNet-18: share of Retrain's work (182 epochs on D_r), "
             "upper bound (same epochs) / lower bound (same steps, at least one pass)\n\n")
    text += "| Method | class-wise | two classes | 10 % random | hours, class-wise |\n|---|---|---|---|---|\n"
    for method in {**projections["classes"], **projections["two_classes"]}:
        cells = []
        for key in ("classes", "two_classes", "random"):
            p = projections[key].get(method)
            cells.append("" if p is None else f"{100 * p['share_upper']:.2f} % / {100 * p['share_lower']:.2f} %")
        p = projections["classes"].get(method, projections["two_classes"].get(method))
        text += f"| {method} | " + " | ".join(cells) + f" | {p['hours_upper']:.2f} / {p['hours_lower']:.2f} |\n"
    text += (f"\nResNet-18 fwd+bwd here: {per_sample * 1000:.2f} ms per 32×32 image; "
             f"total wall time {report['wall_s']} s.\n")
    print(text)
    (RESULTS / f"{stem}.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
