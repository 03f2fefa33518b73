"""What a gated forget vector costs at serving time (`python -m bench.gate_cost`).

A universal δ costs one addition per input; a gated δ costs a second forward pass for the inputs the model
assigns to a forgotten class. Measured side by side in one run, in interleaved rounds (medians), on untrained
models (cost does not depend on the weights): the forward pass alone, universal δ, gated δ where 10 % of the
inputs are gated (one forgotten class of ten, balanced traffic; at batch 1 that rounds to none, the common case
of a single request) and gated δ where all of them are (worst case: every request hits a forgotten class).
Writes bench/results/gate_cost.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from unlearning.evaluation import perturbed_logits
from unlearning.models import build_model

RESULTS = Path(__file__).parent / "results"


class FixedArgmax(nn.Module):
    """Wraps a model so that a chosen share of each batch is assigned to class 0 (the gated class): the first
    `share` of the rows get a large class-0 logit. Lets the benchmark fix how many inputs are gated."""

    def __init__(self, net: nn.Module, share: float):
        super().__init__()
        self.net, self.share = net, share

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        bump = torch.zeros_like(logits)
        bump[: round(len(x) * self.share), 0] = 1e4
        return logits + bump


def _time(fn: Callable[[], object], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def measure(arch: str, shape: tuple[int, int, int], batch: int, rounds: int, repeats: int) -> dict:
    torch.manual_seed(0)
    net = build_model(arch, shape[0], 10).eval()
    x = torch.rand(batch, *shape)
    delta = 0.01 * torch.randn(shape)
    variants = {
        "forward only": lambda: net(x),
        "universal δ": lambda: perturbed_logits(net, x, delta),
        "gated δ, 10 % gated": lambda: perturbed_logits(FixedArgmax(net, 0.1), x, delta, gate_classes=[0]),
        "gated δ, 100 % gated": lambda: perturbed_logits(FixedArgmax(net, 1.0), x, delta, gate_classes=[0]),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        for fn in variants.values():  # warm-up
            fn()
        for _ in range(rounds):
            for name, fn in variants.items():
                times[name].append(_time(fn, repeats))
    base = statistics.median(times["forward only"])
    return {name: {"ms_per_batch": round(1000 * statistics.median(t), 3),
                   "images_per_s": round(batch / statistics.median(t)),
                   "ratio_to_forward": round(statistics.median(t) / base, 3)} for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one round, few repeats (smoke run)")
    args = parser.parse_args(argv)
    rounds, repeats = (1, 2) if args.quick else (args.rounds, 10)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cases = [("small_cnn", (1, 8, 8), 32), ("small_cnn", (1, 8, 8), 1),
             ("resnet18_small", (3, 32, 32), 32), ("resnet18_small", (3, 32, 32), 1)]
    results = []
    for arch, shape, batch in cases:
        row = measure(arch, shape, batch, rounds, repeats)
        results.append({"arch": arch, "input": list(shape), "batch": batch, "variants": row})
    RESULTS.mkdir(exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
            "rounds": rounds, "repeats": repeats}
    (RESULTS / "gate_cost.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print("| model | batch | variant | ms / batch | images/s | × forward |")
    print("|---|---|---|---|---|---|")
    for r in results:
        for name, v in r["variants"].items():
            print(f"| {r['arch']} {r['input']} | {r['batch']} | {name} | {v['ms_per_batch']} | "
                  f"{v['images_per_s']} | {v['ratio_to_forward']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
