"""What clipping x + δ to [0, 1] does to class-wise forget vectors (`python -m bench.clip`).

The paper's code feeds x + δ to the model unclipped; the service clips, so every served input is a valid image.
For each class and seed: the same vector config with clip on and off, measured as the service would serve each
(clipped or not). Writes bench/results/clip.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace

import torch

from bench.quality import RESULTS, measured
from bench.zoo import RECIPES
from unlearning import learn_forget_vector, split_by_classes
from unlearning.evaluation import accuracy
from unlearning.forget_vector import CLASS_WISE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    digits = RECIPES["digits"]
    train, test = digits.sets(0)
    rows: dict[str, list[dict]] = {"clipped (service)": [], "unclipped (paper code)": []}
    for seed in args.seeds:
        original = digits.fit(digits.new_model(train, seed), train, seed)
        for cls in args.classes:
            split = split_by_classes(train, [cls])
            kept = ~torch.isin(test.y, torch.tensor([cls]))
            for name, clip in (("clipped (service)", True), ("unclipped (paper code)", False)):
                cfg = replace(CLASS_WISE, clip=clip, seed=seed)
                vector, seconds, work = measured(
                    type(original), lambda o=original, s=split, c=cfg: learn_forget_vector(o, s, c))
                d = vector.delta
                rows[name].append({
                    "seed": seed, "class": cls, "epochs": vector.epochs, "time_s": seconds, "work": work,
                    "UA": 100 * (1 - accuracy(original, split.forget.x, split.forget.y, d, clip)),
                    "RA": 100 * accuracy(original, split.retain.x, split.retain.y, d, clip),
                    "TA": 100 * accuracy(original, test.x[kept], test.y[kept], d, clip),
                    "delta_l2": float(d.norm()), "delta_max": float(d.abs().max()),
                    # share of pixel values that leave [0, 1] before clipping
                    "out_of_range": float(((split.retain.x + d) < 0).float().mean()
                                          + ((split.retain.x + d) > 1).float().mean()),
                })
    keys = ("UA", "RA", "TA", "delta_l2", "delta_max", "out_of_range", "epochs", "work")
    lines = ["| Variant | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, runs in rows.items():
        cells = [f"{statistics.mean(r[k] for r in runs):.3g} ± {statistics.pstdev(r[k] for r in runs):.2g}"
                 for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "clip.json").write_text(json.dumps({"seeds": args.seeds, "classes": args.classes, "runs": rows},
                                                  indent=1))
    (RESULTS / "clip.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
