"""Print the README's benchmark tables (the verdict matrix, tuned overview, condensed claims)
from a suite store, so the README is regenerated from the data rather than edited by hand.

    python benchmarks/readme_tables.py docs/results/small/suite_small.db

The verdict matrix (claims x problems, coloured by verdict; the reproduce experiments' verdict
counts where the store holds them) is :func:`beyondsgd.bench.report.matrix.matrix_markdown`,
printed first, for the top of the README.

The claims (each listed once, with where its paper states it) and then the rows, which name a
claim by its id, are :func:`beyondsgd.bench.analysis.claims.evaluate_store`'s: each claim on the
kind of problem the paper ran, every seed counted (``div k/n``: seeds that diverged), time to
target on the validation split, the median verdict over tuning studies and **unstable** where they
differ; an inconclusive verdict says why where it can (untestable with the seeds run, or
underpowered: the seeds 80% power needs).
"""

from __future__ import annotations

import argparse

from beyondsgd.bench.analysis.claims import claims_legend, evaluate_store, mean_text
from beyondsgd.bench.protocol import FINAL_TAG
from beyondsgd.bench.report import overview_table, summarize
from beyondsgd.bench.report.matrix import matrix_markdown
from beyondsgd.bench.store import Store


def claims_rows(store: Store) -> str:
    results = evaluate_store(store)
    multi = any(len(r.studies) > 1 for r in results)
    lines = [claims_legend(results),
             "| claim | problem | quantity | ours: method vs comparisons, mean ± std over seeds "
             "(every seed counted) | verdict |", "|---|---|---|---|---|"]
    for r in results:
        c, v = r.claim, r.studies[0]
        frac = f" at {c.fraction:.0%} data" if c.fraction < 1 else ""
        comps = "; ".join(f"{b} {mean_text(x, v.b_diverged.get(b, 0), c.quantity)}"
                          for b, x in v.b_values.items())
        quantity = c.quantity + (f" (val target {v.target:.4g})" if v.target is not None else "")
        verdict = f"**unstable** (median {r.verdict_text()})" if r.unstable else r.verdict_text()
        if multi:
            verdict += f"; studies: {', '.join(s.verdict_text() for s in r.studies)}"
        lines.append(f"| `{c.id}` | {r.problem} | {quantity} | "
                     f"{c.method}{frac} {mean_text(v.a_values, v.a_diverged, c.quantity)} vs "
                     f"{comps} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store")
    args = ap.parse_args()
    with Store(args.store, readonly=True) as st:
        print(matrix_markdown(st))
        print()
        rows = summarize(st)
        print(overview_table(rows, FINAL_TAG))
        print()
        print(claims_rows(st))


if __name__ == "__main__":
    main()
