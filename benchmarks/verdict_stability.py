"""Do the claims' verdicts survive a re-run? Compare the claims of two suite stores.

Run the suite twice on the same code (a second store, or a copy of the first with its final runs
deleted so that every trial a verdict reads is trained again), then:

    python benchmarks/verdict_stability.py docs/results/small/suite_small.db /tmp/rerun.db

prints one line per (claim, problem): the verdict in each store, whether it flipped, and whether
the first store marks it unstable (its tuning studies disagree). Also: how many final trials of
the second store have bit-identical final metrics in the first (the runs are seeded; only the
clocks, and a solver stopped by a time limit, may differ). Exit status 1 when a verdict flips
that the first store does not mark unstable.
"""

from __future__ import annotations

import argparse
import sys

from beyondsgd.bench.analysis.claims import evaluate_store
from beyondsgd.bench.store import Store

METRICS = ("final_train_loss", "final_val_metric", "final_test_metric")


def verdicts(path: str) -> dict[tuple[str, str], tuple[str, bool]]:
    with Store(path, readonly=True) as st:
        return {(r.claim.id, r.problem): (r.verdict_text(), r.unstable)
                for r in evaluate_store(st)}


def identical_finals(a: str, b: str) -> tuple[int, int, list[str]]:
    """(final trials of ``b`` whose key is in ``a`` with equal final metrics, those compared,
    labels of the ones that differ)."""
    with Store(a, readonly=True) as sa, Store(b, readonly=True) as sb:
        ref = {t["key"]: t for t in sa.trials() if (t["tag"] or "").startswith("final")}
        same, n, diff = 0, 0, []
        for t in sb.trials():
            r = ref.get(t["key"])
            if r is None:
                continue
            n += 1
            if all(r[k] == t[k] for k in METRICS) and r["status"] == t["status"]:
                same += 1
            else:
                diff.append(f"{t['problem']}/{t['method']}/{t['tag']}/seed {t['seed']}")
    return same, n, diff


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first")
    ap.add_argument("second")
    args = ap.parse_args(argv)
    va, vb = verdicts(args.first), verdicts(args.second)
    bad = 0
    print("| claim | problem | first | second | flipped | marked unstable in the first |")
    print("|---|---|---|---|---|---|")
    for key in sorted(set(va) | set(vb)):
        (a, ua), (b, _) = va.get(key, ("–", False)), vb.get(key, ("–", False))
        flip = a.split(" (")[0] != b.split(" (")[0]
        bad += flip and not ua
        print(f"| `{key[0]}` | {key[1]} | {a} | {b} | {'yes' if flip else 'no'} | "
              f"{'yes' if ua else 'no'} |")
    same, n, diff = identical_finals(args.first, args.second)
    print(f"\nfinal trials with identical final metrics and status: {same} of {n}")
    for d in diff:
        print(f"  differs: {d}")
    print(f"verdicts flipped without an unstable mark: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
