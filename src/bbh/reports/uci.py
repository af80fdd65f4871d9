"""``report.md`` of the UCI benchmark, from a ``results.json`` (:func:`render_report`)."""

from __future__ import annotations

from typing import Any

from .markdown import mean_se

CHOICES = ("selected_steps", "noise_scale", "selected_dropout")
"""What a cell records of its split's validation choice; aggregated as {value: number of splits}."""

def _counts(counts: dict[str, int] | None) -> str:
    """Chosen values over the splits, ``value ×count`` (a step count as 2,400, a factor to 3 digits)."""
    if not counts:
        return "—"

    def value(v: str) -> str:
        x = float(v)
        return f"{x:,.0f}" if x.is_integer() and abs(x) >= 10 else f"{x:.3g}"

    return ", ".join(f"{value(v)} ×{c}" if c > 1 else value(v) for v, c in counts.items())


def _pub(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def render_report(results: dict[str, Any]) -> str:
    """``report.md`` of :func:`bbh.experiments.uci.run_uci`'s ``results``, which hold everything it shows (the
    columns' order ``method_order``, the ``published`` numbers, the ``validation`` share): test LL and RMSE tables
    (datasets x methods, mean ± SE; a single split as "mean (n = 1)", it has no SE) with the published numbers in
    the columns beside, the budget in words, the settings, and the summed time of the finished cells (labelled as
    such: it is not the command's wall time)."""

    def cell(entry: dict[str, Any] | None, digits: int = 2) -> str:  # one split: no "± 0.00" that looks like an SE
        if entry is not None and len(entry.get("per_split", ())) == 1:
            return f"{entry['mean']:.{digits}f} (n = 1)"
        return mean_se(entry, digits)

    def plural(n: int, word: str) -> str:
        return f"{n:,} {word}{'' if n == 1 else 's'}"

    def budget_text(b: dict[str, Any]) -> str:
        splits = "every split" if b.get("splits") is None else f"the first {plural(b['splits'], 'split')}"
        steps = (f"{b['min_steps']:,}–{b['max_steps']:,}" if b.get("max_steps") is not None
                 else f"at least {b['min_steps']:,}")
        return (f"{splits} of each dataset, {steps} training steps per cell (a method that chooses its length on "
                f"validation: multiples of {b['min_steps']:,}), "
                f"{plural(b['n_samples'], 'predictive draw')}; HMC on at most {plural(b['hmc_splits'], 'split')}, "
                f"its chains at {b['hmc_scale']:g}x length")

    table = results["datasets"]
    order = results.get("method_order") or list(dict.fromkeys(m for t in table.values() for m in t))
    methods = [m for m in order if any(m in t for t in table.values())]
    published = results.get("published") or {}
    published_ll, published_rmse = published.get("test_ll", {}), published.get("rmse", {})
    pub_ll = ["PBP", "MC-Dropout 2016", "MC-Dropout 2018", "Ensemble 2017"]
    budget = results["budget"]
    missing = results.get("missing_cells") or 0
    lines = [f"# UCI regression benchmark ({results['split_kind']} splits, budget `{results['budget_name']}`)", "",
             f"Budget: {budget_text(budget) if isinstance(budget, dict) else budget}. "
             f"{plural(results['n_cells'], 'cell')} finished"
             + (f", {plural(missing, 'cell')} of the grid not run yet" if missing else "")
             + f"; {results['seconds'] / 60:.1f} min is the sum of the finished cells' wall times, not the command's "
             "(cells finished by earlier runs count, the time between cells does not). Mean ± standard error over the "
             "splits (n in the last table; one split: \"(n = 1)\", no SE); original units of y.", ""]
    if results.get("merged", {}).get("methods"):
        lines += [f"Cells of {', '.join(results['merged']['methods'])} taken from an earlier run "
                  f"(`{results['merged']['source']}`, same budget and split kind); the other methods' from this "
                  "one.", ""]
    if results["split_kind"] == "gap":
        lines += ["Gap splits (Foong et al. 2019): split k holds out the middle third of the data sorted by input "
                  "dimension k (only the dimensions with a real gap: no test value of the feature occurs in training, "
                  "`UCIDataset.gap_dimensions`); published numbers are for the standard splits and are not shown.", ""]
    header = ["dataset", *methods] + (pub_ll if results["split_kind"] == "standard" else [])
    lines += ["## Test log-likelihood (higher is better)", "", "| " + " | ".join(header) + " |",
              "|" + "---|" * len(header)]
    for name in sorted(table):
        row = [name, *(cell(table[name].get(m, {}).get("test_ll")) for m in methods)]
        if results["split_kind"] == "standard":
            row += [_pub(published_ll.get(name, {}).get(p)) for p in pub_ll]
        lines.append("| " + " | ".join(row) + " |")
    header = ["dataset", *methods] + (["MC-Dropout 2018"] if results["split_kind"] == "standard" else [])
    lines += ["", "## RMSE (lower is better)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in sorted(table):
        row = [name, *(cell(table[name].get(m, {}).get("rmse"), 3) for m in methods)]
        if results["split_kind"] == "standard":
            row.append(_pub(published_rmse.get(name, {}).get("MC-Dropout 2018")))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Predictive std / RMSE (1: as wide as the errors; > 1 over-dispersed, < 1 over-confident)", "",
              "| dataset | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
    for name in sorted(table):
        lines.append(f"| {name} | " + " | ".join(cell(table[name].get(m, {}).get("std_over_rmse")) for m in methods)
                     + " |")
    lines += ["", "## Splits and wall time per cell group", "", "| dataset | " + " | ".join(methods) + " |",
              "|" + "---|" * (len(methods) + 1)]
    for name in sorted(table):
        cells = [f"{t['n_splits']} / {t['seconds']:.0f} s" + (f" ({len(t['failed_splits'])} diverged)"
                                                                if t.get("failed_splits") else "")
                 if (t := table[name].get(m)) else "—" for m in methods]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    # the references: the methods whose cells carry sampler diagnostics (HMC, NUTS)
    references = [m for m in methods if any(table[n].get(m, {}).get("rhat_f_max") is not None for n in table)]
    for ref in references:
        ran = [n for n in sorted(table) if table[n].get(ref, {}).get("rhat_f_max") is not None]
        label = ref.upper()
        paired = [m for m in methods if m != ref]
        lines += ["", f"## Test LL minus {label}'s, paired over the splits {label} ran (0: as good as the reference)",
                  "", "| dataset | " + " | ".join(paired) + " |", "|" + "---|" * (len(paired) + 1)]
        for name in ran:
            lines.append(f"| {name} | " + " | ".join(cell(table[name].get(m, {}).get(f"test_ll_minus_{ref}"))
                                                       for m in paired) + " |")

        def bar(h: dict[str, Any]) -> str:
            met = h.get("splits_meeting_bar")
            return "" if met is None else f", the bar (R-hat ≤ 1.05 on 99 % of points, ESS ≥ 200, no divergence) " \
                                          f"met on {met} of {h['n_splits']} splits"

        lines += ["", f"{label} convergence (rank-normalised split R-hat and bulk ESS of the test predictions f(x), "
                  "over its splits): " + "; ".join(
                      f"{n}: R-hat max {(h := table[n][ref])['rhat_f_max']:.2f}, median {h['rhat_f_median']:.3f}, "
                      f"ESS min {h['ess_f_min']:.0f}, {h['divergences']} divergences{bar(h)}" for n in ran) + "."]
    if any(key in table[n].get(m, {}) for n in table for m in methods for key in CHOICES):
        lines += ["", "## Chosen on validation", "",
                  "Every tuned method chooses its training length, its noise factor c (the predictive uses c σ) "
                  "and MC-Dropout its dropout rate per split, on that split's own validation "
                  f"carve-out (the last {results.get('validation', 0.2):.0%} of a seeded permutation of the split's "
                  "training rows): no "
                  "split's test rows touch any choice. The `-untuned` columns run the budget's length with c = 1. "
                  "Chosen values, over the splits (value ×count); the last column counts the splits whose length is "
                  "the shortest or longest offered (the best may lie beyond the grid):", "",
                  "| dataset | method | length (steps) | c | dropout | length at the grid's end |",
                  "|---|---|---|---|---|---|"]
        for n in sorted(table):
            for m in methods:
                entry = table[n].get(m, {})
                if any(key in entry for key in CHOICES):
                    edge = (f"{entry['lengths_at_edge']} of {entry['n_splits']}" if "lengths_at_edge" in entry
                            else "—")
                    lines.append(f"| {n} | {m} | " + " | ".join(_counts(entry.get(key)) for key in CHOICES)
                                 + f" | {edge} |")
    lines += ["", f"Published: {published.get('sources', '—')}", "", "Settings (every dataset): "
              + "; ".join(f"{m}: {results['settings'][m]}" for m in methods if m in results["settings"]), ""]
    return "\n".join(lines)
