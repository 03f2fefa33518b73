"""Tables and targets of `bench.serve` from its results (pure: a results dict in, markdown out)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

FIELDS = ("images_per_s", "p50_ms", "p99_ms")
INPUT_NAMES = {"json": "JSON", "v2": "V2 binary", "png": "PNG"}


def median_timing(rounds: Sequence[Mapping[str, float]]) -> dict[str, float] | None:
    """Median of each figure over the rounds (each figure on its own); None without rounds."""
    if not rounds:
        return None
    return {name: statistics.median(r[name] for r in rounds) for name in FIELDS}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _find(measurements: Sequence[Mapping[str, Any]], **key: Any) -> Mapping[str, Any] | None:
    return next((m for m in measurements if all(m.get(k) == v for k, v in key.items())), None)


def _figures(measurement: Mapping[str, Any] | None) -> dict[str, float] | str | None:
    """Median figures (over the rounds that did not fail), the reason it was skipped or failed, or None when not
    measured."""
    if measurement is None:
        return None
    if measurement.get("skipped"):
        return measurement["skipped"]
    figures = median_timing(measurement["rounds"])
    if figures is None and measurement.get("failed_rounds"):
        return f"failed: {measurement['failed_rounds'][0]}"
    return figures


def cell_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per model, cell and unlearnd input, joined with the limit and LitServe (JSON) of the same cell."""
    rows = []
    measurements = results["measurements"]
    for m in measurements:
        if m["system"] != "unlearnd":
            continue
        cell = {"model": m["model"], "batch": m["batch"], "concurrency": m["concurrency"]}
        unlearnd = _figures(m)
        limit = _figures(_find(measurements, system="limit", **cell))
        litserve = _figures(_find(measurements, system="litserve", **cell))
        speed = unlearnd["images_per_s"] if isinstance(unlearnd, dict) else None
        rows.append({**cell, "input": m["input"], "unlearnd": unlearnd, "limit": limit, "litserve": litserve,
                     "vs_limit": ratio(speed, limit["images_per_s"] if isinstance(limit, dict) else None),
                     "vs_litserve": ratio(speed, litserve["images_per_s"] if isinstance(litserve, dict) else None)})
    return rows


def delta_overheads(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per model: p50 without δ, with the universal and with the gated δ, and the overheads against none: as the
    ratio of the p50s, and paired (the median over rounds of the median of each cycle's latency difference to no δ,
    over the p50 without δ)."""
    out = []
    for model in dict.fromkeys(d["model"] for d in results["delta_overhead"]):
        p50, paired = {}, {}
        for d in results["delta_overhead"]:
            if d["model"] == model:
                figures = median_timing(d["rounds"])
                p50[d["variant"]] = figures["p50_ms"] if figures else None
                differences = [r["paired_ms"] for r in d["rounds"] if "paired_ms" in r]
                paired[d["variant"]] = statistics.median(differences) if differences else None
        first = next(d for d in results["delta_overhead"] if d["model"] == model)
        gated = next((d for d in results["delta_overhead"] if d["model"] == model and d["variant"] == "gated"), {})
        row = {"model": model, "input": first["input"], "p50_ms": p50, "gated_share": gated.get("gated_share")}
        for variant in ("universal", "gated"):
            r = ratio(p50.get(variant), p50.get("none"))
            row[f"{variant}_overhead"] = None if r is None else r - 1
            row[f"{variant}_paired"] = ratio(paired.get(variant), p50.get("none"))
        out.append(row)
    return out


def _row(rows: Sequence[Mapping[str, Any]], model: str, batch: int, concurrency: int,
         input_: str) -> Mapping[str, Any] | None:
    return _find(rows, model=model, batch=batch, concurrency=concurrency, input=input_)


def _at_least(value: float | None, bound: float) -> bool | None:
    return None if value is None else value >= bound


def targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Issue 11's targets, each with what was measured and whether it is met (None: could not be measured)."""
    rows = cell_rows(results)
    small, large = "resnet18-32", "resnet18-224"
    out = []
    for batch, concurrency, bound in ((1, 32, 0.8), (32, 1, 0.85)):
        row = _row(rows, small, batch, concurrency, "v2")
        value = row["vs_limit"] if row else None
        out.append({"target": f"ResNet-18 3×32×32, V2 binary, batch {batch} × concurrency {concurrency}: "
                              f"≥ {bound} of the limit", "value": value, "unit": "×", "met": _at_least(value, bound)})
    decode = png_decode_ms(results, large)
    out.append({"target": "3×224×224 PNG: decoding ≤ 2 ms per image (p50, the server's decoder)", "value": decode,
                "unit": "ms", "met": None if decode is None else decode <= 2.0})
    compared = [r for r in rows if r["vs_litserve"] is not None]
    versus = [r["vs_litserve"] for r in compared]
    beyond = sum(not _reachable(r) for r in compared)
    out.append({"target": "every cell ≥ 1.5× LitServe (same run; LitServe takes JSON)",
                "value": min(versus) if versus else None, "unit": "×",
                "met": None if not versus else all(v >= 1.5 for v in versus),
                "detail": f"{sum(v >= 1.5 for v in versus)} of {len(versus)} cells"
                          + (f"; in {beyond} of them 1.5× LitServe is above the limit itself" if beyond else "")})
    overheads = [d["universal_paired"] for d in delta_overheads(results) if d["universal_paired"] is not None]
    worst = max(overheads) if overheads else None
    out.append({"target": "δ overhead ≤ 2 % at p50 (universal δ against none, paired request by request)",
                "value": worst, "unit": "%",
                "met": None if worst is None else worst <= 0.02})
    for intake in results.get("intake") or [{}]:
        workers = intake.get("api_workers", 1)
        target = ("intake: ≥ 500 accepted requests/s at concurrency 50 (closed loop), p99 ≤ 50 ms at 500 requests/s "
                  f"offered (open loop, ≤ 50 connections), every one durable; UNLEARND_API_WORKERS={workers}")
        if intake.get("rounds") and intake.get("at_rate"):
            burst, at_rate = median_timing(intake["rounds"]), median_timing(intake["at_rate"])
            durable = intake["durable"] == intake["accepted"] and not intake["refused"]
            met = burst["images_per_s"] >= 500 and at_rate["p99_ms"] <= 50 and durable
            out.append({"target": target, "value": burst["images_per_s"], "unit": "/s", "met": met,
                        "detail": f"p99 at {intake['rate_per_s']:.0f}/s offered {at_rate['p99_ms']:.1f} ms; "
                                  f"{intake['durable']} of {intake['accepted']} accepted requests in the ledger"})
        else:
            out.append({"target": target, "value": None, "unit": "/s", "met": None})
    return out


def _reachable(row: Mapping[str, Any]) -> bool:
    """Whether 1.5× LitServe's images/s is at most the limit of the cell (no server can pass the limit)."""
    litserve, limit = row["litserve"], row["limit"]
    return not (isinstance(litserve, dict) and isinstance(limit, dict)
                and 1.5 * litserve["images_per_s"] > limit["images_per_s"])


def png_decode_ms(results: Mapping[str, Any], model: str) -> float | None:
    """Median over rounds of the p50 time to decode one PNG for `model`; None when not measured."""
    record = _find(results.get("png_decoding", []), model=model)
    figures = median_timing(record["rounds"]) if record else None
    return figures["p50_ms"] if figures else None


# ---- markdown ------------------------------------------------------------------------------------------------------
def _n(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _speed(figures: Any) -> str:
    if isinstance(figures, str):  # why it was not measured, listed under the table
        return figures.split(":")[0]
    return "–" if figures is None else _n(figures["images_per_s"])


def _latency(figures: Any) -> str:
    if not isinstance(figures, dict):
        return "–"
    return f"{_n(figures['p50_ms'], 2)} / {_n(figures['p99_ms'], 1)}"


def _met(met: bool | None) -> str:
    return {True: "**met**", False: "**not met**", None: "not measured"}[met]


def _value(target: Mapping[str, Any]) -> str:
    value, unit = target["value"], target["unit"]
    if value is None:
        return "–"
    return {"×": f"{value:.2f}×", "ms": f"{value:.2f} ms", "%": _pct(value), "/s": f"{value:,.0f}/s"}[unit]


def markdown(results: Mapping[str, Any]) -> str:
    """The generated block of docs/benchmarks.md: setup, the table, δ overhead, intake and the targets."""
    meta = results["meta"]
    titles = meta["models"]
    lines = [
        f"Run of {meta['date']}: {meta['machine']}, {meta['cores']} cores (shared with other work; load average "
        f"{meta['load_before']} before, {meta['load_after']} after), torch {meta['torch']}, LitServe "
        f"{meta['litserve']}, Python {meta['python']}; {_rounds(meta)} interleaved rounds of "
        f"{meta['duration_s']} s per measurement, medians; wall time {meta['wall_min']:.1f} min.",
        f"Command: `{meta['command']}`. unlearnd settings: "
        + ", ".join(f"`UNLEARND_{k.upper()}={v}`" for k, v in meta["settings"].items()) + ".",
        "",
        "| model | input | batch × concurrency | unlearnd images/s | p50 / p99 ms | limit images/s | ÷ limit | "
        "LitServe images/s (JSON) | LitServe p50 / p99 ms | ÷ LitServe |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes: dict[str, list[str]] = {}
    for row in cell_rows(results):
        cell = f"{titles[row['model']]}, {row['batch']} × {row['concurrency']}"
        if all(isinstance(row[k], str) for k in ("unlearnd", "limit", "litserve")):
            notes.setdefault(row["unlearnd"], []).append(cell)
            continue
        if isinstance(row["unlearnd"], str):
            notes.setdefault(row["unlearnd"], []).append(f"{cell}, unlearnd {INPUT_NAMES[row['input']]}")
        for system in ("limit", "litserve"):  # one figure per cell, whatever unlearnd's input
            if isinstance(row[system], str):
                notes.setdefault(row[system], []).append(f"{cell}, {system}")
        lines.append(
            f"| {titles[row['model']]} | {INPUT_NAMES[row['input']]} | {row['batch']} × {row['concurrency']} | "
            f"{_speed(row['unlearnd'])} | {_latency(row['unlearnd'])} | {_speed(row['limit'])} | "
            f"{_n(row['vs_limit'], 2)} | {_speed(row['litserve'])} | {_latency(row['litserve'])} | "
            f"{_n(row['vs_litserve'], 2)} |")
    for m in results["measurements"]:
        failed = m.get("failed_rounds", [])
        if failed and m["rounds"]:
            who = m["system"] if m["system"] != "unlearnd" else f"unlearnd {INPUT_NAMES[m['input']]}"
            reason = (f"failed in {len(failed)} of {len(failed) + len(m['rounds'])} rounds ({failed[0]}); the "
                      "figures are the medians of the others")
            notes.setdefault(reason, []).append(f"{titles[m['model']]}, {m['batch']} × {m['concurrency']}, {who}")
    lines += ["", *(f"- {reason}: {'; '.join(dict.fromkeys(cells))}." for reason, cells in notes.items())]
    lines += ["", "δ overhead (batch 1 × concurrency 1, same network, three served states; the ratio of the p50s, and "
                  "paired: the median of each cycle's latency difference to no δ, over the p50 without δ):", "",
              "| model | input | no δ | universal δ | gated δ | universal overhead: p50s / paired | "
              "gated overhead: p50s / paired |", "|---|---|---|---|---|---|---|"]
    for d in delta_overheads(results):
        p50 = d["p50_ms"]
        lines.append(
            f"| {titles[d['model']]} | {INPUT_NAMES[d['input']]} | {_n(p50.get('none'), 3)} ms | "
            f"{_n(p50.get('universal'), 3)} ms | {_n(p50.get('gated'), 3)} ms{_share(d['gated_share'])} | "
            f"{_pct(d['universal_overhead'])} / {_pct(d['universal_paired'])} | "
            f"{_pct(d['gated_overhead'])} / {_pct(d['gated_paired'])} |")
    decoding = [f"{titles[r['model']]} {_n(png_decode_ms(results, r['model']), 3)} ms"
                for r in results.get("png_decoding", [])]
    if decoding:
        lines += ["", "PNG decoding per image (p50; the server's decoder, `service.codecs.decode_image`, timed in the "
                      "benchmark process): " + ", ".join(decoding) + "."]
    for intake in results.get("intake", []):
        if not (intake["rounds"] and intake["at_rate"]):
            continue
        burst, at_rate = median_timing(intake["rounds"]), median_timing(intake["at_rate"])
        refused = ", ".join(f"{n}× {s}" for s, n in sorted(intake["refused"].items())) or "none"
        lines += ["", f"Deletion-request intake, UNLEARND_API_WORKERS={intake['api_workers']} "
                      f"({intake['requests_per_round']} POSTs per measurement, each with its own Idempotency-Key, no "
                      f"worker running): closed loop at concurrency {intake['concurrency']} (each caller sends again "
                      f"on its answer: the most the API accepts) {_n(burst['images_per_s'])} accepted requests/s, "
                      f"p50 {_n(burst['p50_ms'], 1)} ms, p99 {_n(burst['p99_ms'], 1)} ms; open loop at "
                      f"{intake['rate_per_s']:.0f} requests/s offered (≤ {intake['concurrency']} connections, "
                      f"latency from when each request was due) {_n(at_rate['images_per_s'])} accepted/s, p50 "
                      f"{_n(at_rate['p50_ms'], 1)} ms, p99 {_n(at_rate['p99_ms'], 1)} ms; {intake['durable']} of "
                      f"{intake['accepted']} answered 202 are rows of the ledger afterwards; refused: {refused}."]
    lines += ["", "| target (issue 11) | measured | |", "|---|---|---|"]
    for t in targets(results):
        detail = f" ({t['detail']})" if t.get("detail") else ""
        lines.append(f"| {t['target']} | {_value(t)}{detail} | {_met(t['met'])} |")
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f} %"


def _rounds(meta: Mapping[str, Any]) -> str:
    planned = meta.get("rounds_planned", meta["rounds"])
    if meta["rounds"] == planned:
        return str(planned)
    return f"{meta['rounds']} (of {planned} planned: the time budget stopped the run)"


def _share(gated_share: float | None) -> str:
    return "" if gated_share is None else f" ({100 * gated_share:.0f} % of inputs gated)"
