"""Every speed ratio of the README's performance table, in one command (issue 26).

Each row is a ratio of two configurations timed *interleaved in one process* (A, B, A, B, ...;
the SLBI rows ABBA): a change of machine load hits both alike, a row's ratio is the median over
rounds of the same-round ratios, and the spread [min-max] over rounds is printed with it. Torch
runs on one thread unless a row says otherwise. The load average is printed before and after
every row. The rows reuse the existing benchmark scripts (``proxprop_speed.time_steps``,
``slbi_overhead.measure``) and the library's own entry points (``run_trial``, ``solve_layer``).

    OMP_NUM_THREADS=1 python benchmarks/speed.py               # all rows (< 10 min, 2 idle cores)
    python benchmarks/speed.py --quick --only slbi             # smoke run of some rows
    python benchmarks/speed.py --markdown                      # the README table from the JSON
    python benchmarks/speed.py --markdown --before OLD.json    # ... with a before column

Rows (``--only`` takes row names or the groups ``proxprop``, ``slbi``, ``pht``, ``gdsolver``,
``official``): see ``ROWS``. Writes ``benchmarks/results/speed.json`` (merged row by row, so a
partial run keeps the other rows) and prints the Markdown table at the end.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts

import proxprop_speed  # noqa: E402
import slbi_overhead  # noqa: E402

from beyondsgd import models as M  # noqa: E402
from beyondsgd.bench.problems import get_problem  # noqa: E402
from beyondsgd.bench.run.runner import run_trial  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "speed.json"


@dataclass
class Row:
    name: str
    group: str
    what: str                      # the ratio, "A / B"
    net: str                       # the network (and data) behind the figure
    shape: str                     # batch, input shape, threads
    goal: str                      # the target ("" when none)
    run: Callable[[bool], dict]    # quick -> {"ratio": ..., "per_round": [...], ...}
    threads: int = 1


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def summary(per_round: list[float]) -> dict:
    return {"ratio": statistics.median(per_round), "min": min(per_round),
            "max": max(per_round), "rounds": len(per_round), "per_round": per_round}


# ---- ProxProp: seconds per step over BackProp's, same round --------------------------------
class _Data:
    """Synthetic inputs for the shapes no registered problem has on this machine."""

    def __init__(self, shape: tuple[int, ...], n: int = 1024, classes: int = 10):
        g = torch.Generator().manual_seed(0)
        self.x_train = torch.randn(n, *shape, generator=g)
        self.y_train = torch.randint(0, classes, (n,), generator=g)


def _convnet() -> nn.Sequential:
    # time_steps flattens the inputs of a custom builder: unflatten them again
    return nn.Sequential(nn.Unflatten(1, (3, 32, 32)), *M.proxprop_convnet(3, 10, "relu", 0))


# proxprop_speed has the paper's ConvNet and the B 500 MLP since issue 26; older versions
# (ad0c5a0) do not: then they are added here (its custom builders take flattened inputs)
if "convnet" in proxprop_speed.SHAPES:
    CONVNET = {128: "convnet", 32: "convnet32"}
else:
    proxprop_speed.SHAPES.update({"convnet128": ("synthetic", 128, _convnet),
                                  "convnet32": ("synthetic", 32, _convnet)})
    CONVNET = {128: "convnet128", 32: "convnet32"}
proxprop_speed.SHAPES.setdefault("mlp500", ("fmnist_mlp", 500, None))
_DATA: dict[str, object] = {}


def _data(problem: str):
    if problem not in _DATA:
        if hasattr(proxprop_speed, "load_data"):
            _DATA[problem] = proxprop_speed.load_data(problem)
        else:
            _DATA[problem] = (_Data((3, 32, 32)) if problem == "synthetic"
                              else get_problem(problem).load(0))
    return _DATA[problem]


def proxprop_row(shape: str, configs: tuple[str, ...], steps: int, rounds: int,
                 threads: int) -> Callable[[bool], dict]:
    def run(quick: bool) -> dict:
        n_rounds, n_steps = (1, 1) if quick else (rounds, steps)
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            data = _data(proxprop_speed.SHAPES[shape][0])
            cells = ("backprop", *configs)
            times: dict[str, list[float]] = {c: [] for c in cells}
            for r in range(n_rounds):
                order = cells if r % 2 == 0 else cells[::-1]
                for c in order:
                    times[c].append(proxprop_speed.time_steps(
                        shape, proxprop_speed.CONFIGS[c], data, n_steps))
        finally:
            torch.set_num_threads(old)
        bp = times["backprop"]
        out = summary([a / b for a, b in zip(times[configs[0]], bp)])
        out["ms_per_step"] = {c: 1e3 * statistics.median(v) for c, v in times.items()}
        out["others"] = {c: statistics.median(a / b for a, b in zip(times[c], bp))
                         for c in configs[1:]}
        out["steps_per_cell"] = n_steps
        return out
    return run


# ---- SLBI: seconds per training step over SGD+momentum's (ABBA blocks) ---------------------
def slbi_row(problem: str, rounds: int, block_seconds: float) -> Callable[[bool], dict]:
    def run(quick: bool) -> dict:
        res = slbi_overhead.measure(problem, 2 if quick else rounds,
                                    0.1 if quick else block_seconds, torch.device("cpu"))
        lo, med, hi = res["ratio_step_per_round_min_median_max"]   # same-round ratios
        return {"ratio": med, "min": lo, "max": hi, "rounds": res["rounds"],
                "ratio_of_medians": res["ratio_step"],
                # 1 + (SLBI's extra optimizer time) / (SGD's whole step): less exposed to the
                # load's noise in forward/backward
                "others": {"from optimizer time": res["ratio_step_from_optimizer"]},
                "ms_per_step": {"sgd": res["sgd_ms_per_step"], "slbi": res["slbi_ms_per_step"]},
                "optimizer_ms": {"sgd": res["sgd_opt_ms"], "slbi": res["slbi_opt_ms"]},
                "ratio_step_from_optimizer": res["ratio_step_from_optimizer"],
                "steps_per_block": res["steps_per_block"]}
    return run


# ---- PHT -----------------------------------------------------------------------------------
def pht_epoch_row(problem: str, rounds: int, epochs: int) -> Callable[[bool], dict]:
    """pht_alt (defaults) over SGD, training seconds per epoch (the runner's train_seconds:
    evaluation excluded), one trial each per round; and pht_alt with ``layer_solve="none"``
    (the K steps and support steps alone), so the per-epoch solve's part is the difference."""
    cells = {"sgd": ("sgd", {}), "pht_alt": ("pht_alt", {}),
             "K steps only": ("pht_alt", {"layer_solve": "none"})}

    def run(quick: bool) -> dict:
        n_rounds, n_epochs = (1, 1) if quick else (rounds, epochs)
        secs: dict[str, list[float]] = {c: [] for c in cells}
        for r in range(n_rounds):
            for c in (list(cells) if r % 2 == 0 else list(cells)[::-1]):
                method, hp = cells[c]
                res = run_trial(problem, method, hp, seed=0, epochs=n_epochs)
                secs[c].append(res.final["train_seconds"] / n_epochs)
        out = summary([a / b for a, b in zip(secs["pht_alt"], secs["sgd"])])
        out["others"] = {"K steps only": statistics.median(
            a / b for a, b in zip(secs["K steps only"], secs["sgd"]))}
        out["seconds_per_epoch"] = {k: statistics.median(v) for k, v in secs.items()}
        out["epochs_per_trial"] = n_epochs
        return out
    return run


def pht_solve_row(problem: str, rounds: int, repeats: int) -> Callable[[bool], dict]:
    """One solve of the first hidden Linear layer (layer_solve='all' solves it, exact least
    squares under frozen supports) with pht_alt's default damping 1e-3 over damping 0."""
    def run(quick: bool) -> dict:
        from beyondsgd.methods.pht import DEFAULT_TAU, pht, solvable_layers, solve_layer
        from beyondsgd.methods.pht.method import PHTAlternation
        damping = PHTAlternation({}).hp["damping"]
        prob = get_problem(problem)
        data = prob.load(0)
        model = pht(prob.build_model(data, "relu", 0), DEFAULT_TAU)
        layer = solvable_layers(model)[0]
        x, y = data.x_train, data.y_train
        loss = "mse" if prob.task == "regression" else "cross_entropy"
        n_rounds, n_rep = (1, 1) if quick else (rounds, repeats)

        def timed(d: float) -> float:
            t = 0.0
            for _ in range(n_rep):
                m = copy.deepcopy(model)
                t0 = time.perf_counter()
                solve_layer(m, layer, x, y, loss=loss, damping=d)
                t += time.perf_counter() - t0
            return t / n_rep

        timed(0.0)                                         # warm-up
        secs: dict[str, list[float]] = {"damped": [], "undamped": []}
        for r in range(n_rounds):
            for k in (("damped", "undamped") if r % 2 == 0 else ("undamped", "damped")):
                secs[k].append(timed(damping if k == "damped" else 0.0))
        out = summary([a / b for a, b in zip(secs["damped"], secs["undamped"])])
        out["ms_per_solve"] = {k: 1e3 * statistics.median(v) for k, v in secs.items()}
        out.update(layer=layer, damping=damping, samples=int(x.shape[0]))
        return out
    return run


# ---- GDSolver: the solver's share of training time -----------------------------------------
def gdsolver_row(problem: str, rounds: int, epochs: int | None, hp: dict
                 ) -> Callable[[bool], dict]:
    """Share of train_seconds spent in the MILP (build + solve), GDSolver with ``hp``
    (``epochs`` None: the problem's own), and what one solve costs in epochs of the run's GD
    (solver seconds per solve over the GD seconds per epoch, GD = train_seconds minus solver)."""
    def run(quick: bool) -> dict:
        n_rounds, n_epochs = (1, 2 if epochs else 4) if quick else (rounds, epochs)
        shares, solves, per_solve = [], [], []
        for _ in range(n_rounds):
            res = run_trial(problem, "gdsolver", hp, seed=0, epochs=n_epochs)
            milp = [e for e in res.events if e.get("kind") == "milp"]
            solver = sum(e["solve_seconds"] + e["build_seconds"] for e in milp)
            train = res.final["train_seconds"]
            shares.append(solver / train)
            solves.append(len(milp))
            run_epochs = res.final.get("epoch") or n_epochs
            if milp and train > solver:
                per_solve.append((solver / len(milp)) / ((train - solver) / run_epochs))
        out = summary(shares)
        out.update(hp=hp, epochs=n_epochs, solves=solves, ratio_kind="share",
                   solve_in_epochs=statistics.median(per_solve) if per_solve else None)
        return out
    return run


OFFICIAL_ENV = "BEYONDSGD_OFFICIAL_PROXPROP"


def official_row(quick: bool) -> dict:
    """The official ProxProp code (github.com/tfrerix/proxprop, its ``ProxProp.py`` in the
    directory ``--official`` names, fetched and run outside this repository: no code of it is
    in ours) over ours, seconds per step on fmnist_mlp 784-256-256-10, B 128, Nesterov SGD: the
    official ``ProxPropLinear`` hidden layers and a plain output layer against
    ``proxprop(model)`` (the same layers converted), cg3 (and cg10), interleaved. Its
    ``prox_exact`` calls ``torch.gesv``, which torch 2 no longer has, so exact is not timed."""
    where = os.environ.get(OFFICIAL_ENV)
    if not where:
        return {"ratio": None, "note": "not measured here (give --official DIR: a directory "
                "holding the official ProxProp.py)"}
    import warnings

    from beyondsgd.methods.proxprop import proxprop
    sys.path.insert(0, where)
    try:
        official = __import__("ProxProp")
    finally:
        sys.path.remove(where)
    data = _data("fmnist_mlp")
    x = data.x_train.reshape(data.x_train.shape[0], -1)
    y = data.y_train
    n_rounds, n_steps, bs = (1, 2, 128) if quick else (5, 20, 128)

    def build(which: str, iters: int) -> nn.Module:
        torch.manual_seed(0)
        if which == "official":
            def layer(i: int, o: int) -> nn.Module:
                return official.ProxPropLinear(i, o, tau_prox=1.0,
                                               optimization_mode=f"prox_cg{iters}")
            return nn.Sequential(layer(784, 256), nn.ReLU(), layer(256, 256), nn.ReLU(),
                                 nn.Linear(256, 10))
        model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                              nn.Linear(256, 10))
        return proxprop(model, tau_theta=1.0, solver="cg", cg_iters=iters,
                        output_layer="4")

    def seconds(model: nn.Module) -> float:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.95, nesterov=True)

        def step(i: int) -> None:
            j = (i * bs) % (x.shape[0] - bs)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[j:j + bs]), y[j:j + bs]).backward()
            opt.step()

        step(0)
        t0 = time.perf_counter()
        for i in range(n_steps):
            step(1 + i)
        return (time.perf_counter() - t0) / n_steps

    ratios: dict[int, list[float]] = {3: [], 10: []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the official code's deprecated torch calls
        for r in range(n_rounds):
            for iters in ratios:
                pair = ("official", "ours") if r % 2 == 0 else ("ours", "official")
                t = {w: seconds(build(w, iters)) for w in pair}
                ratios[iters].append(t["official"] / t["ours"])
    out = summary(ratios[3])
    out["others"] = {"cg10": statistics.median(ratios[10])}
    out["note_exact"] = "official prox_exact needs torch.gesv (gone in torch 2): not timed"
    return out


PP = "ProxProp cg3 / BackProp per step"
ROWS = [
    Row("proxprop_convnet_b128", "proxprop", PP + " (cg10, exact too)",
        "ProxProp paper's ConvNet conv16-conv20-conv20-fc1280 (synthetic inputs)",
        "B 128, 3x32x32", "<= 2.0", proxprop_row(CONVNET[128], ("cg3", "cg10", "exact"), 4, 7, 1)),
    Row("proxprop_convnet_b32", "proxprop", PP + " (cg10, exact too)",
        "ProxProp paper's ConvNet conv16-conv20-conv20-fc1280 (synthetic inputs)",
        "B 32, 3x32x32", "<= 2.0", proxprop_row(CONVNET[32], ("cg3", "cg10", "exact"), 10, 7, 1)),
    Row("proxprop_mlp_b128_t1", "proxprop", PP, "fmnist_mlp 784-256-256-10", "B 128",
        "<= 1.8", proxprop_row("mlp", ("cg3",), 60, 7, 1)),
    Row("proxprop_mlp_b128_t2", "proxprop", PP, "fmnist_mlp 784-256-256-10", "B 128", "<= 1.8",
        proxprop_row("mlp", ("cg3",), 60, 9, 2), threads=2),
    Row("proxprop_mlp_b500_t1", "proxprop", PP, "fmnist_mlp 784-256-256-10", "B 500", "<= 1.8",
        proxprop_row("mlp500", ("cg3",), 24, 7, 1)),
    Row("proxprop_mlp_b500_t2", "proxprop", PP, "fmnist_mlp 784-256-256-10", "B 500", "<= 1.8",
        proxprop_row("mlp500", ("cg3",), 24, 9, 2), threads=2),
    Row("proxprop_wide_b500", "proxprop", PP, "paper-width MLP 784-4000-1000-4000-10 "
        "(Fashion-MNIST inputs)", "B 500", "<= 1.8 (hold)",
        proxprop_row("wide", ("cg3",), 1, 3, 1)),
    Row("proxprop_2c2d_b128", "proxprop", PP, "fmnist_2c2d conv32-conv64-fc1024", "B 128",
        "hold (1.76-1.93)", proxprop_row("cnn", ("cg3",), 2, 5, 1)),
    Row("proxprop_official", "official", "official ProxProp / ours per step, cg3 (cg10 too)",
        "fmnist_mlp 784-256-256-10 (official ProxPropLinear layers vs ours)", "B 128",
        ">= 2 (hold)", official_row),
    Row("slbi_mlp", "slbi", "SLBI / SGD+momentum per step", "fmnist_mlp 784-256-256-10",
        "B 128", "<= 1.05", slbi_row("fmnist_mlp", 15, 0.5)),
    Row("slbi_lenet5", "slbi", "SLBI / SGD+momentum per step", "fmnist_lenet5 (LeNet-5)",
        "B 128", "<= 1.05", slbi_row("fmnist_lenet5", 15, 0.5)),
    Row("slbi_2c2d", "slbi", "SLBI / SGD+momentum per step", "fmnist_2c2d conv32-conv64-fc1024",
        "B 128", "<= 1.05", slbi_row("fmnist_2c2d", 9, 1.0)),
    Row("pht_epoch_digits", "pht", "PHT alternation (defaults) / SGD per epoch",
        "digits_mlp 64-128-128-10", "problem's batch", "<= K + 1 = 6",
        pht_epoch_row("digits_mlp", 9, 4)),
    Row("pht_epoch_mnist1d", "pht", "PHT alternation (defaults) / SGD per epoch",
        "mnist1d_mlp 40-256-256-10", "problem's batch", "<= K + 1 = 6",
        pht_epoch_row("mnist1d_mlp", 7, 2)),
    Row("pht_solve_diabetes", "pht", "PHT layer_solve='all': one hidden-layer solve, damped / "
        "undamped", "diabetes_mlp 10-64-64-1 (PHT)", "whole training set", "<= 2",
        pht_solve_row("diabetes_mlp", 5, 5)),
    Row("gdsolver_share_digits", "gdsolver", "GDSolver solver share of training time "
        "(solve_every=2)", "digits_mlp 64-128-128-10", "problem's batch, 4 epochs (--quick: 2)",
        "<= 0.25", gdsolver_row("digits_mlp", 3, 4, {"solve_every": 2, "solves_per_run": 0})),
    Row("gdsolver_share_defaults_digits", "gdsolver", "GDSolver solver share of training time "
        "(defaults)", "digits_mlp 64-128-128-10", "problem's batch and epochs (--quick: 4)", "-",
        gdsolver_row("digits_mlp", 1, None, {})),
    Row("gdsolver_share_defaults_mnist1d", "gdsolver", "GDSolver solver share of training time "
        "(defaults)", "mnist1d_mlp 40-256-256-10", "problem's batch and epochs (--quick: 4)",
        "-", gdsolver_row("mnist1d_mlp", 1, None, {})),
]


def fmt_ratio(r: dict) -> str:
    if r.get("ratio") is None:
        return r.get("note", "not measured")
    s = f"{r['ratio']:.2f} [{r['min']:.2f}-{r['max']:.2f}]"
    if r.get("others"):
        s += " (" + ", ".join(f"{k} {v:.2f}" for k, v in r["others"].items()) + ")"
    if r.get("ratio_kind") == "share":
        s += " of train_seconds"
        if r.get("solve_in_epochs") is not None:
            s += (f", {sum(r['solves']) / len(r['solves']):.3g} solves per run, one solve = "
                  f"{r['solve_in_epochs']:.0f} GD epochs")
    return s


def markdown(results: dict, before: dict | None = None) -> str:
    """The README table; with ``before`` (the rows of an earlier run) a before column too."""
    b_head, b_rule = ("before: median [min-max] | ", "---|") if before is not None else ("", "")
    lines = [f"| ratio | net | shape, threads | {b_head}median [min-max] over rounds | goal | "
             "load (1/5/15 min) before / after the row |",
             f"|---|---|---|{b_rule}---|---|---|"]
    for row in ROWS:
        r = results.get(row.name)
        if r is None:
            continue
        load_s = f"{r.get('load_before', '-')} / {r.get('load_after', '-')}"
        b_cell = ""
        if before is not None:
            b_cell = (fmt_ratio(before[row.name]) if row.name in before else "-") + " | "
        lines.append(f"| {row.what} | {row.net} | {row.shape}, {row.threads} thread"
                     f"{'s' if row.threads > 1 else ''} | {b_cell}{fmt_ratio(r)} | "
                     f"{row.goal or '-'} | {load_s} |")
    return "\n".join(lines)


def select(only: str | None) -> list[Row]:
    if not only:
        return ROWS
    keys = set(only.split(","))
    known = {r.name for r in ROWS} | {r.group for r in ROWS}
    if keys - known:
        raise SystemExit(f"unknown rows {sorted(keys - known)}; accepted: {sorted(known)}")
    return [r for r in ROWS if r.name in keys or r.group in keys]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated row names or groups")
    ap.add_argument("--quick", action="store_true", help="1 round, few steps: a smoke run")
    ap.add_argument("--markdown", action="store_true",
                    help="print the README table from the JSON and exit")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--no-save", action="store_true", help="do not write the JSON")
    ap.add_argument("--before", help="with --markdown: a JSON of an earlier run, as a column")
    ap.add_argument("--official", help="a directory holding the official ProxProp.py "
                    "(github.com/tfrerix/proxprop, outside this repository): times the "
                    "proxprop_official row")
    args = ap.parse_args(argv)
    if args.official:
        if not (Path(args.official) / "ProxProp.py").is_file():
            raise SystemExit(f"--official {args.official}: no ProxProp.py there; accepted: a "
                             "directory holding the official ProxProp.py")
        os.environ[OFFICIAL_ENV] = str(Path(args.official).resolve())
    out = Path(args.out)
    saved = json.loads(out.read_text()) if out.exists() else {}
    if args.markdown:
        before = json.loads(Path(args.before).read_text())["rows"] if args.before else None
        print(markdown(saved.get("rows", {}), before))
        return saved
    torch.set_num_threads(1)
    rows = select(args.only)
    t_all = time.perf_counter()
    head = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "torch": torch.__version__, "python": platform.python_version(),
            "cpus": os.cpu_count(), "quick": args.quick, "load_before": load()}
    print(f"speed.py {head['date']} torch {head['torch']} cpus {head['cpus']} "
          f"quick {args.quick}; load average (1/5/15 min) {head['load_before']}", flush=True)
    results: dict[str, dict] = {}
    for row in rows:
        lb = load()
        t0 = time.perf_counter()
        r = row.run(args.quick)
        r.update(what=row.what, net=row.net, shape=row.shape, threads=row.threads,
                 goal=row.goal, load_before=lb, load_after=load(),
                 seconds=round(time.perf_counter() - t0, 1))
        results[row.name] = r
        print(f"ROW {row.name} | {row.what} | net {row.net} | {row.shape} | threads "
              f"{row.threads} | ratio {fmt_ratio(r)} | goal {row.goal or '-'} | load "
              f"{lb} -> {r['load_after']} | {r['seconds']} s", flush=True)
    head.update(load_after=load(), seconds=round(time.perf_counter() - t_all, 1))
    print(f"total {head['seconds']} s; load average {head['load_before']} -> "
          f"{head['load_after']}\n")
    print(markdown(results))
    if not args.no_save:
        saved.setdefault("rows", {}).update(results)
        saved["last_run"] = {**head, "rows": [r.name for r in rows]}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(saved, indent=1))
    return {"rows": results, **head}


if __name__ == "__main__":
    main()
