"""Print the README's benchmark tables (tuned overview, condensed claims) from a suite
store, so the README is regenerated from the data rather than edited by hand.

    python benchmarks/readme_tables.py docs/results/small/suite_small.db
"""

from __future__ import annotations

import argparse
import math
import statistics

from beyondsgd.bench.claims import collect, evaluate_claims
from beyondsgd.bench.protocol import FINAL_TAG
from beyondsgd.bench.report import overview_table, summarize
from beyondsgd.bench.store import Store


def _mean(vals: list[float]) -> str:
    fin = [v for v in vals if math.isfinite(v)]
    if not fin:
        return "diverged"
    extra = f" ({len(vals) - len(fin)} div.)" if len(fin) < len(vals) else ""
    return f"{statistics.fmean(fin):.4g}{extra}"


def claims_rows(store: Store) -> str:
    lines = ["| claim (paper) | problem | ours: method vs comparisons (mean of 3 seeds) | "
             "verdict |", "|---|---|---|---|"]
    for v in evaluate_claims(collect(store)):
        paper = v.claim.paper.split(" (")[0]
        comps = ", ".join(f"{b} {_mean(x)}" for b, x in v.b_values.items())
        lines.append(f"| {v.claim.text} ({paper}) | {v.problem} | {v.claim.quantity}: "
                     f"{v.claim.method} {_mean(v.a_values)} vs {comps} | {v.verdict} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store")
    args = ap.parse_args()
    with Store(args.store) as st:
        rows = summarize(st)
        print(overview_table(rows, FINAL_TAG))
        print()
        print(claims_rows(st))


if __name__ == "__main__":
    main()
