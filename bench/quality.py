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
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from unlearning import (
    ForgetVectorConfig,
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
from unlearning.forget_vector import random_forget_target
from unlearning.metrics import avg_gap, unlearning_report
from unlearning.smoothing import SmoothingConfig, accuracy_at_most, lipschitz_smoothing
from workers.methods import SAMPLE_VECTOR, ZERO_SHOT_CLASS_TARGET

RESULTS = Path(__file__).parent / "results"
TRAIN = TrainConfig(epochs=15, seed=0)
FINE_TUNE = TrainConfig(epochs=3, lr=0.01)
CIFAR = {"n_train": 50_000, "n_forget_class": 5_000, "n_forget_random": 5_000, "retrain_epochs": 182}


class PassCounter:
    """Counts samples through the model's forward: with autograd on (≈ fwd+bwd, 3 units) or off (1 unit).

    The hook is a closure, so copies of the model made by a method (deepcopy keeps hooks) count here too."""

    def __init__(self, model: torch.nn.Module):
        counts = self.counts = {"grad": 0, "nograd": 0}

        def hook(module, inputs, output):
            counts["grad" if torch.is_grad_enabled() else "nograd"] += inputs[0].shape[0]

        model.register_forward_hook(hook)

    @property
    def work(self) -> int:
        return 3 * self.counts["grad"] + self.counts["nograd"]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def new_model(arch: str, channels: int, mean, std, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return NormalizedClassifier(build_model(arch, channels, 10), mean, std)


def subsample(data: ImageSet, n: int, seed: int) -> ImageSet:
    mask = torch.zeros(len(data), dtype=torch.bool)
    mask[torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]] = True
    return data.subset(mask)


def run_methods(original, build, split, test, classes, seed, bank=None, train_cfg=None) -> dict[str, dict]:
    """Every method on one forget request; returns {method: metrics + time_s + work}."""
    rows: dict[str, dict] = {}

    def record(name, model, seconds, work, delta=None, extra=None):
        rows[name] = {**unlearning_report(model, split, test, classes, delta=delta), "time_s": round(seconds, 3),
                      "work": work, **(extra or {})}

    record("Original", original, 0.0, 0)
    train_cfg = train_cfg or TRAIN
    retrained, seconds = timed(lambda: retrain(build, split, TrainConfig(epochs=train_cfg.epochs, seed=seed)))
    record("Retrain", retrained, seconds, 3 * train_cfg.epochs * len(split.retain))

    work_model = copy.deepcopy(original)
    counter = PassCounter(work_model)
    tuned, seconds = timed(lambda: fine_tune(work_model, split, FINE_TUNE))
    record("Fine-tune", tuned, seconds, counter.work)

    target = 0.0 if classes else random_forget_target(original, split, test)
    work_model = copy.deepcopy(original)
    counter = PassCounter(work_model)
    ascended, seconds = timed(lambda: gradient_ascent(work_model, split, GradientAscentConfig(target_forget_accuracy=target)))
    record("Gradient ascent", ascended, seconds, counter.work)

    work_model = copy.deepcopy(original)
    counter = PassCounter(work_model)
    fv_cfg = ForgetVectorConfig(target_forget_accuracy=target, seed=seed) if classes else \
        ForgetVectorConfig(target_forget_accuracy=target, lr=SAMPLE_VECTOR.lr, batch_size=SAMPLE_VECTOR.batch_size,
                           seed=seed)
    vector, seconds = timed(lambda: learn_forget_vector(work_model, split, fv_cfg))
    record("Forget vector", original, seconds, counter.work, vector.delta,
           {"epochs": vector.epochs, "stop": vector.stop_reason, "delta_l2": round(float(vector.delta.norm()), 3)})

    if bank is not None:
        work_model = copy.deepcopy(original)
        counter = PassCounter(work_model)
        combined, seconds = timed(lambda: learn_coefficients(work_model, split, bank, CoefficientConfig(seed=seed)))
        record("FV arithmetic", original, seconds, counter.work, combined.delta,
               {"epochs": len(combined.history), "stop": combined.stop_reason, "weights": combined.weights})

    work_model = copy.deepcopy(original)
    counter = PassCounter(work_model)
    jit_target = ZERO_SHOT_CLASS_TARGET if classes else target
    smoothed, seconds = timed(lambda: lipschitz_smoothing(
        work_model, split.forget.x, SmoothingConfig(seed=seed),
        stop=accuracy_at_most(split.forget.x, split.forget.y, jit_target)))
    jit_model = copy.deepcopy(original)
    jit_model.load_state_dict(smoothed.state_dict)
    record("JiT", jit_model, seconds, counter.work, extra={"steps": smoothed.steps, "stop": smoothed.stop_reason})

    for row in rows.values():
        row["gap"] = avg_gap(row, rows["Retrain"])
        row["time_ratio"] = round(row["time_s"] / rows["Retrain"]["time_s"], 4)
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

        original = train_classifier(build(), train, TrainConfig(epochs=train_cfg.epochs, seed=seed))
        for kind, value in requests:
            if kind == "classes":
                split, classes = split_by_classes(train, value), value
            else:
                n = round(len(train) * value)
                ids = [train.ids[i] for i in torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]]
                split, classes = split_by_ids(train, ids), None
            bank = None
            if with_bank and classes and len(classes) > 1:
                bank = {c: learn_forget_vector(original, split_by_classes(train, [c]), ForgetVectorConfig(seed=seed)).delta
                        for c in classes}
            rows = run_methods(original, build, split, test, classes, seed, bank, train_cfg)
            out.append({"scenario": name, "seed": seed, "request": [kind, value], "arch": arch,
                        "n_forget": len(split.forget), "n_retain": len(split.retain), "methods": rows})
            log(f"  {name} seed={seed} {kind}={value}: " + ", ".join(
                f"{m} gap {r['gap']:.1f} ({r['time_s']:.1f}s)" for m, r in rows.items()))
    return out


def summarise(runs: list[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """{method: {metric: (mean, std)}} over every run of a scenario."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for method, row in run["methods"].items():
            for key in ("UA", "RA", "TA", "MIA", "gap", "time_s", "time_ratio", "work"):
                if row.get(key) is not None:
                    values[method][key].append(float(row[key]))
    return {m: {k: (statistics.mean(v), statistics.pstdev(v)) for k, v in metrics.items()}
            for m, metrics in values.items()}


def markdown(title: str, summary: dict) -> str:
    lines = [f"### {title}", "", "| Method | UA | RA | TA | MIA | Avg. Gap | Time (s) | Time / Retrain |",
             "|---|---|---|---|---|---|---|---|"]
    for method, m in summary.items():
        def cell(key, digits=2):
            mean, std = m.get(key, (float("nan"), 0.0))
            return f"{mean:.{digits}f} ± {std:.{digits}f}"
        lines.append(f"| {method} | {cell('UA')} | {cell('RA')} | {cell('TA')} | {cell('MIA')} | {cell('gap')} | "
                     f"{cell('time_s')} | {m['time_ratio'][0]:.3f} |")
    return "\n".join(lines) + "\n"


def resnet18_batch_seconds(batch: int = 64, repeats: int = 3) -> float:
    """Measured fwd+bwd time of one ResNet-18 (small-input variant) batch of 3×32×32 images here."""
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
    return statistics.median(times[1:]) / batch  # seconds per sample, fwd+bwd


def projection(runs: list[dict], kind: str, per_sample_s: float) -> dict[str, dict]:
    """Each method's recipe scaled to CIFAR-10 sizes, as a share of Retrain's work (182 epochs on D_r)."""
    n_forget = CIFAR["n_forget_class"] if kind == "classes" else CIFAR["n_forget_random"]
    n_retain = CIFAR["n_train"] - n_forget
    retrain_work = 3 * CIFAR["retrain_epochs"] * n_retain
    out = {}
    for method in ("Fine-tune", "Gradient ascent", "Forget vector", "FV arithmetic", "JiT"):
        rows = [r["methods"][method] for r in runs if method in r["methods"]]
        if not rows:
            continue
        # Work per digits-sized problem, rescaled by the ratio of set sizes the method touches.
        scaled = []
        for run, row in zip([r for r in runs if method in r["methods"]], rows):
            if method == "JiT" or method == "Gradient ascent":
                scale = n_forget / run["n_forget"]
            else:
                scale = (n_forget + n_retain) / (run["n_forget"] + run["n_retain"])
            scaled.append(row["work"] * scale)
        work = statistics.mean(scaled)
        out[method] = {"share_of_retrain": work / retrain_work,
                       "projected_hours": work / 3 * per_sample_s / 3600 * 3}
    out["Retrain"] = {"share_of_retrain": 1.0, "projected_hours": retrain_work / 3 * per_sample_s / 3600 * 3}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 classes, 1 seed: a smoke run of about a minute")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    seeds = [0] if args.quick else args.seeds
    classes = [3, 8] if args.quick else list(range(10))
    train, test = load_digits_split(test_fraction=0.2, seed=0)
    small_train = subsample(train, 300, seed=0)  # harder variant: retrain no longer fits every forget sample
    started = time.perf_counter()
    results: dict[str, list[dict]] = {}
    print("class-wise forgetting, each class", flush=True)
    results["classwise"] = scenario("classwise", train, test, seeds, [("classes", [c]) for c in classes])
    print("10 % random forgetting (plain digits)", flush=True)
    results["random"] = scenario("random", train, test, seeds, [("random", 0.1)])
    print("10 % random forgetting (harder: 300 training images)", flush=True)
    results["random_small"] = scenario("random_small", small_train, test, seeds, [("random", 0.1)])
    print("two-class forgetting through vector arithmetic", flush=True)
    results["two_class"] = scenario("two_class", train, test, seeds, [("classes", [2, 7])], with_bank=True)
    print("ResNet-18 (small-input variant) on digits, class 3", flush=True)
    results["resnet18"] = scenario("resnet18", train, test, seeds[:1], [("classes", [3])], arch="resnet18_small",
                                   train_cfg=TrainConfig(epochs=4 if args.quick else 8))

    per_sample = resnet18_batch_seconds()
    summaries = {k: summarise(v) for k, v in results.items()}
    projections = {"classes": projection(results["classwise"] + results["two_class"], "classes", per_sample),
                   "random": projection(results["random_small"], "random", per_sample)}
    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()},
        "command": "python -m bench.quality" + (" --quick" if args.quick else ""),
        "seeds": seeds, "classes": classes, "wall_s": round(time.perf_counter() - started, 1),
        "resnet18_fwd_bwd_s_per_sample_32x32": per_sample,
        "summaries": summaries, "projection_cifar10_resnet18": projections, "runs": results,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("quality-quick.json" if args.quick else "quality.json")).write_text(json.dumps(report, indent=1))
    titles = {"classwise": "Class-wise, each of the 10 classes", "random": "10 % random, plain digits",
              "random_small": "10 % random, harder variant (300 training images)",
              "two_class": "Two classes (2 and 7), FV arithmetic over class vectors",
              "resnet18": "ResNet-18 (small-input) on digits, class 3"}
    text = "\n".join(markdown(titles[k], s) for k, s in summaries.items())
    text += "\n### Projected to CIFAR-10 / ResNet-18 (share of Retrain's work: 182 epochs on D_r)\n\n"
    text += "| Method | class-wise | 10 % random |\n|---|---|---|\n"
    for method in projections["classes"]:
        c = projections["classes"][method]["share_of_retrain"]
        r = projections["random"].get(method, {}).get("share_of_retrain")
        text += f"| {method} | {100 * c:.3f} % | {'' if r is None else f'{100 * r:.3f} %'} |\n"
    text += f"\nResNet-18 fwd+bwd here: {per_sample * 1000:.2f} ms per 32×32 image; total wall time {report['wall_s']} s.\n"
    print(text)
    (RESULTS / ("quality-quick.md" if args.quick else "quality.md")).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
