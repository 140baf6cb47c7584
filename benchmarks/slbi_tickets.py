"""DessiLBI on Fashion-MNIST: accuracy vs SGD/Adam, the support path, and winning tickets.

For each problem and seed: SGD (momentum 0.9), Adam (1e-3) and SLBI (paper coupling) train from
the same initialisation on the same minibatches; SLBI's dense W and sparse W*1[Gamma!=0] are
evaluated every epoch and the unit support (filters/neurons with Gamma != 0) is kept per epoch.
Winning tickets (ticket seeds): the support of an early epoch E, applied to the *initial* weights
and retrained with SGD (masks fixed) for the same budget, against a random mask with the same
number of units per layer and a magnitude mask (largest-norm units of the trained dense SGD net,
same sizes, also reset to the initial weights).

To fit a CPU budget of minutes the training set is subsampled (``--train``) and runs are short
(``--epochs``); lambda is scaled down accordingly (the path's time scale is ~lambda*nu/lr steps).
Rows are appended to a JSONL file as they finish; a rerun skips finished rows.

    flock /tmp/beyondsgd-bench.lock python benchmarks/slbi_tickets.py
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from beyondsgd.bench.problems import get_problem
from beyondsgd.bench.run.runner import DATA_SPLIT_SEED, epoch_batches, evaluate
from beyondsgd.methods.slbi import SLBI, slbi_param_groups
from beyondsgd.methods.slbi import sparsity as S

# problem: train subset, epochs, lr, SLBI nu and lambda; tickets are taken at the first three
# epochs at which every coupled layer has at least one selected unit (an empty layer would
# disconnect the network).
CONFIGS = {
    "fmnist_lenet5": dict(train=10000, epochs=6, lr=0.05, nu=100.0, lam=0.05),
    "fmnist_mlp": dict(train=20000, epochs=6, lr=0.05, nu=100.0, lam=0.1),
}
N_TICKETS = 3


def train(prob, model, opt, data, cfg, seed, on_epoch=None):
    x, y = data.x_train[:cfg["train"]], data.y_train[:cfg["train"]]
    for ep in range(cfg["epochs"]):
        for xb, yb in epoch_batches(x, y, prob.batch_size, seed, ep):
            opt.zero_grad(set_to_none=True)
            prob.loss_fn(model(xb), yb).backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(ep + 1)


def test_acc(prob, model, data) -> float:
    return evaluate(prob, model, data.x_test, data.y_test)[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", default="fmnist_lenet5,fmnist_mlp")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--ticket-seeds", default="0")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/slbi_tickets.jsonl")
    ap.add_argument("--plot", default="docs/methods/slbi_path.png")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script")
    args = ap.parse_args()
    if args.smoke:
        for c in CONFIGS.values():
            c.update(train=512, epochs=2, lam=0.002)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    done = {(r["problem"], r["seed"], r["run"], r.get("ticket_epoch")) for r in rows}

    def emit(row: dict) -> None:
        rows.append(row)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k not in ("per_epoch", "masks")}),
              flush=True)

    for pname in args.problems.split(","):
        prob, cfg = get_problem(pname), CONFIGS[pname]
        data = prob.load(DATA_SPLIT_SEED)
        for seed in map(int, args.seeds.split(",")):
            init = prob.build_model(data, "relu", seed)
            ticket_seed = str(seed) in args.ticket_seeds.split(",")
            need = [k for k in ("sgd", "adam", "slbi") if (pname, seed, k, None) not in done]
            if ticket_seed:
                need += ["tickets"]
            if not need:
                continue
            # ---- baselines -------------------------------------------------------------
            sgd_model = copy.deepcopy(init)
            t0 = time.perf_counter()
            train(prob, sgd_model, torch.optim.SGD(sgd_model.parameters(), lr=cfg["lr"],
                                                   momentum=0.9), data, cfg, seed)
            if (pname, seed, "sgd", None) not in done:
                emit({"problem": pname, "seed": seed, "run": "sgd", "lr": cfg["lr"],
                      "test_acc": test_acc(prob, sgd_model, data),
                      "seconds": time.perf_counter() - t0})
            if (pname, seed, "adam", None) not in done:
                m = copy.deepcopy(init)
                t0 = time.perf_counter()
                train(prob, m, torch.optim.Adam(m.parameters(), lr=1e-3), data, cfg, seed)
                emit({"problem": pname, "seed": seed, "run": "adam", "lr": 1e-3,
                      "test_acc": test_acc(prob, m, data), "seconds": time.perf_counter() - t0})
            # ---- SLBI ------------------------------------------------------------------
            m = copy.deepcopy(init)
            # the recorded results used the pre-issue-14 default coupling ("paper") and the
            # pre-issue-22 grouping (hidden Linear weights by neuron, the classifier dense)
            opt = SLBI(slbi_param_groups(m, linear="neuron", output=None), lr=cfg["lr"],
                       kappa=1.0, nu=cfg["nu"],
                       lam=cfg["lam"], momentum=0.9, coupling="paper")
            per_epoch, masks_at = [], {}
            t0 = time.perf_counter()

            def record(ep: int, m=m, opt=opt, prob=prob, data=data, masks_at=masks_at,
                       per_epoch=per_epoch) -> None:
                units = S.unit_masks_from_gamma(m, opt)
                masks_at[ep] = {k: v.clone() for k, v in units.items()}
                per_epoch.append({
                    "epoch": ep, "dense": test_acc(prob, m, data),
                    "sparse": test_acc(prob, S.sparse_model(m, opt), data),
                    "support_frac": {k: float(v.float().mean()) for k, v in units.items()},
                    "weight_frac": S.mask_density(m, units)})
            train(prob, m, opt, data, cfg, seed, on_epoch=record)
            if (pname, seed, "slbi", None) not in done:
                emit({"problem": pname, "seed": seed, "run": "slbi", "lr": cfg["lr"],
                      "nu": cfg["nu"], "lambda": cfg["lam"], "test_acc": per_epoch[-1]["dense"],
                      "sparse_test_acc": per_epoch[-1]["sparse"], "per_epoch": per_epoch,
                      "seconds": time.perf_counter() - t0})
            if not ticket_seed:
                continue
            # ---- tickets ---------------------------------------------------------------
            n_all = S.count_parameters(init)
            ticket_epochs = [e for e, mk in sorted(masks_at.items())
                             if all(bool(v.any()) for v in mk.values())][:N_TICKETS]
            print(f"{pname} seed {seed}: ticket epochs {ticket_epochs}", flush=True)
            for E in ticket_epochs:
                masks = masks_at[E]
                sizes = {k: int(v.sum()) for k, v in masks.items()}
                g = torch.Generator().manual_seed(1000 + seed)
                variants = {
                    "ticket_slbi": masks,
                    "ticket_random": S.random_masks(masks, generator=g),
                    "ticket_magnitude": S.magnitude_masks(sgd_model, sizes),
                }
                for run, mk in variants.items():
                    if (pname, seed, run, E) in done:
                        continue
                    t0 = time.perf_counter()
                    tm, handle = S.ticket(init, mk, zero_bias=True)
                    train(prob, tm, torch.optim.SGD(tm.parameters(), lr=cfg["lr"],
                                                    momentum=0.9), data, cfg, seed)
                    handle.remove()
                    if all(sizes.values()):
                        small = S.export_pruned(tm, mk, removed_bias="zero")
                        n_small, acc = S.count_parameters(small), test_acc(prob, small, data)
                    else:   # a layer kept no unit: disconnected, evaluate the masked net
                        n_small, acc = 0, test_acc(prob, tm, data)
                    emit({"problem": pname, "seed": seed, "run": run, "ticket_epoch": E,
                          "units": sizes, "weight_frac": S.mask_density(init, mk),
                          "params_small": n_small, "params_dense": n_all, "test_acc": acc,
                          "seconds": time.perf_counter() - t0})
    summarize(rows)
    plot(rows, args.plot)


def summarize(rows: list[dict]) -> None:
    def ms(vals):
        if not vals:
            return "n/a"
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{100 * statistics.mean(vals):.2f} ± {100 * sd:.2f} (n={len(vals)})"

    for pname in sorted({r["problem"] for r in rows}):
        rs = [r for r in rows if r["problem"] == pname]
        print(f"\n== {pname} (test accuracy %, mean ± sd over seeds) ==")
        for run in ("sgd", "adam", "slbi"):
            print(f"  {run:18s} {ms([r['test_acc'] for r in rs if r['run'] == run])}")
        sparse = [r["sparse_test_acc"] for r in rs if r["run"] == "slbi"]
        print(f"  {'slbi sparse':18s} {ms(sparse)}")
        sl = [r for r in rs if r["run"] == "slbi"]
        if sl:
            for ep in range(len(sl[0]["per_epoch"])):
                pe = [r["per_epoch"][ep] for r in sl]
                print(f"    epoch {pe[0]['epoch']}: dense {ms([p['dense'] for p in pe])}, sparse "
                      f"{ms([p['sparse'] for p in pe])}, kept weights "
                      f"{100 * statistics.mean(p['weight_frac'] for p in pe):.1f}%")
        for E in sorted({r["ticket_epoch"] for r in rs if r.get("ticket_epoch") is not None}):
            for run in ("ticket_slbi", "ticket_random", "ticket_magnitude"):
                t = [r for r in rs if r["run"] == run and r.get("ticket_epoch") == E]
                if t:
                    print(f"  E={E} {run:17s} {ms([r['test_acc'] for r in t])}  params "
                          f"{t[0]['params_small']}/{t[0]['params_dense']}, units {t[0]['units']}")


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    probs = sorted({r["problem"] for r in rows if r["run"] == "slbi"})
    if not probs:
        return
    fig, axes = plt.subplots(1, len(probs), figsize=(5.5 * len(probs), 4), squeeze=False)
    for ax, pname in zip(axes[0], probs):
        sl = [r for r in rows if r["problem"] == pname and r["run"] == "slbi"]
        epochs = [p["epoch"] for p in sl[0]["per_epoch"]]
        for layer in sl[0]["per_epoch"][0]["support_frac"]:
            ys = [statistics.mean(r["per_epoch"][i]["support_frac"][layer] for r in sl)
                  for i in range(len(epochs))]
            ax.plot([0, *epochs], [0.0, *ys], marker="o", label=f"layer {layer.split('.')[0]}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("fraction of units with Γ≠0")
        ax.set_ylim(-0.02, 1.02)
        ax2 = ax.twinx()
        for key, style in (("dense", "k-"), ("sparse", "k--")):
            ys = [statistics.mean(r["per_epoch"][i][key] for r in sl) for i in range(len(epochs))]
            ax2.plot(epochs, ys, style, label=f"test acc ({key})")
        ax2.set_ylabel("test accuracy")
        ax2.set_ylim(0, 1)
        ax.set_title(f"{pname}: SLBI path (mean of {len(sl)} seeds)")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="center right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


if __name__ == "__main__":
    main()
