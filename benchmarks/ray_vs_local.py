"""The smoke suite on the local executor vs on a local Ray cluster: wall seconds and agreement.

Each configuration runs ``beyondsgd suite --budget smoke`` (every method) into a fresh
temporary store, in this order:

* ``local``: the default local executor (1 worker, torch threads = cores, in this process),
* ``local1`` (``--configs``): the local executor with 1 worker of 1 thread (in this process),
* ``local2`` (``--configs``): the local process pool with ``--cpus`` workers of 1 thread each,
  the like-for-like comparison with Ray,
* ``ray``: a local Ray cluster started here with ``ray.init(num_cpus=--cpus)``, one 1-thread
  task per trial. Its wall time includes the workers' cold start (importing torch, scikit-learn)
  but not ``ray.init`` itself, which is reported separately.

Reported: wall seconds of each, the ratio ray / local, and the agreement of the stores: trial
keys in common, and the largest absolute difference of final test metrics over common keys
(1-thread runs agree exactly; the 2-thread default may differ in the last bits, which can even
change which tuning setting wins and thus the final trials' keys).

    flock /tmp/beyondsgd-bench.lock python benchmarks/ray_vs_local.py [--cpus 2] \
        [--configs local,local1,local2,ray]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

from beyondsgd.bench.protocol.suite import get_budget, run_suite
from beyondsgd.bench.store import Store


def final_metrics(path: str) -> dict[str, tuple[str, float | None]]:
    with Store(path) as st:
        return {t["key"]: (t["status"], t["final_test_metric"]) for t in st.trials()}


def compare(a: dict, b: dict) -> dict:
    common = sorted(set(a) & set(b))
    diffs = [abs(a[k][1] - b[k][1]) for k in common
             if a[k][1] is not None and b[k][1] is not None
             and math.isfinite(a[k][1]) and math.isfinite(b[k][1])]
    return {"trials": [len(a), len(b)], "common_keys": len(common),
            "status_mismatches": sum(a[k][0] != b[k][0] for k in common),
            "max_abs_diff_final_test_metric": max(diffs) if diffs else None}


def timed(label: str, budget: str, store: str, **kw) -> dict:
    t0 = time.perf_counter()
    res = run_suite(budget, store, progress=False, **kw)
    wall = time.perf_counter() - t0
    print(f"{label:7s} {wall:8.1f} s  ({res.jobs} trials, {len(res.failed)} failed)", flush=True)
    return {"wall_seconds": wall, "trials": res.jobs, "failed": len(res.failed),
            "settings": {k: v for k, v in kw.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", default="smoke")
    ap.add_argument("--cpus", type=int, default=2, help="Ray CPUs (and local2 workers)")
    ap.add_argument("--configs", default="local,ray",
                    help="comma-separated, run in this order: local (default settings), local1 "
                         "(1 worker x 1 thread), local2 (--cpus workers x 1 thread), ray")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ray_vs_local.json"))
    args = ap.parse_args()

    import ray

    get_budget(args.budget)  # fail early on a bad name
    configs = args.configs.split(",")
    known = ("local", "local1", "local2", "ray")
    if not {"local", "ray"} <= set(configs) or not set(configs) <= set(known):
        ap.error(f"--configs {args.configs!r}: needs local and ray; accepted: {', '.join(known)}")
    load0 = list(os.getloadavg())
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        stores = {name: os.path.join(tmp, f"{name}.db") for name in known}
        settings = {"local": {}, "local1": {"workers": 1, "threads": 1},
                    "local2": {"workers": args.cpus, "threads": 1}}
        for name in configs:
            if name != "ray":
                runs[name] = timed(name, args.budget, stores[name], **settings[name])
                continue
            t0 = time.perf_counter()
            ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING")
            init_s = time.perf_counter() - t0
            try:
                runs["ray"] = timed("ray", args.budget, stores["ray"], executor="ray", threads=1)
            finally:
                ray.shutdown()
            runs["ray"]["ray_init_seconds"] = init_s
        metrics = {name: final_metrics(stores[name]) for name in runs}

    agreement = {f"ray_vs_{name}": compare(metrics["ray"], metrics[name])
                 for name in runs if name != "ray"}
    ratio = runs["ray"]["wall_seconds"] / runs["local"]["wall_seconds"]
    print(f"ray.init: {init_s:.1f} s (not included above)")
    ratios = {name: runs["ray"]["wall_seconds"] / runs[name]["wall_seconds"]
              for name in runs if name != "ray"}
    for name, r in ratios.items():
        print(f"ratio ray / {name}: {r:.2f}")
    for name, agr in agreement.items():
        print(f"{name}: {agr['common_keys']} common keys of {agr['trials']}, "
              f"{agr['status_mismatches']} status mismatches, max |diff| final test metric "
              f"{agr['max_abs_diff_final_test_metric']}")
    out = {"budget": args.budget, "cpus": args.cpus, "runs": runs, "ratio_ray_over_local": ratio,
           "ratios_ray_over": ratios,
           "agreement": agreement, "cpu_count": os.cpu_count(),
           "platform": platform.platform(), "ray": ray.__version__,
           "loadavg_1_5_15_at_end": list(os.getloadavg()), "loadavg_1_5_15_at_start": load0}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
