"""ProxProp paper, Table 1 in miniature: learning-rate robustness of BackProp vs ProxProp.

Paper (Section 5.2, CIFAR-10 MLP 3072-4000-1000-4000-10, Nesterov 0.95, batch 500,
tau_theta = 1, 50 epochs): full-batch training loss vs learning rate tau; BackProp diverges for
tau >= 0.5 (best 0.091 at tau = 0.05) while ProxProp cg3/cg5 stay finite up to tau = 10 and
reach 2e-3 / 3e-4 at tau = 1.

Here (to fit a 2-core CPU budget): Fashion-MNIST, a fixed random subset of ``--train``
training images, the ``fmnist_mlp`` network (784-256-256-10, ReLU, PyTorch default init),
Nesterov momentum 0.95, batch 500, ``--epochs`` epochs, tau_theta = 1, the official stopping
rule (cg_tol 1e-2, cg_eps 1e-6) and ``--cg-variant``: ``textbook`` (our CG, eps relative to the
residual) or ``official`` (the official code's aliased iteration with an absolute eps, which
produced the paper's numbers). Metric: full-batch training loss on the subset after training
("diverged" when a loss became NaN/inf). One line per run is appended to ``--out`` as it
finishes; finished runs are skipped on re-run (rows without ``cg_variant`` predate issue 17:
textbook CG with the absolute eps; they are listed as ``textbook-abs``).

``--part adam`` runs the Section 5.3 comparison in miniature instead: ProxProp+Adam
(``proxprop``, lr 1e-3, tau_theta 1, cg3) vs BackProp+Adam (``adam``, lr 1e-3) on
``fmnist_2c2d`` (batch 128) through the benchmark runner, on a ``--train``-image subset for
``--epochs`` epochs: training loss per epoch and per training second, test accuracy (paper,
CIFAR-10 ConvNet, 50 epochs: test 70.7% vs 69.6%). Run under the benchmark lock::

    flock /tmp/beyondsgd-bench.lock python benchmarks/proxprop_table1.py
    flock /tmp/beyondsgd-bench.lock python benchmarks/proxprop_table1.py --part adam \
        --train 5000 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from beyondsgd import models as M
from beyondsgd.data import load_fashion_mnist
from beyondsgd.methods.proxprop import proxprop

TAUS = (50.0, 10.0, 5.0, 1.0, 0.5, 0.1, 0.05, 5e-3)
METHODS = {"backprop": None, "cg1": 1, "cg3": 3, "cg5": 5}
PAPER = {  # Table 1, 50 epochs, CIFAR-10 MLP (None = diverged)
    "backprop": (None, None, None, None, None, 0.524, 0.091, 0.637),
    "cg1": (77.9, 0.079, 0.145, 0.667, 0.991, 1.481, 1.593, 1.881),
    "cg3": (94.7, 0.644, 0.031, 2e-3, 0.012, 1.029, 1.334, 1.814),
    "cg5": (66.5, 0.190, 0.027, 3e-4, 2e-3, 0.399, 1.049, 1.765),
}


@torch.no_grad()
def full_loss(model, x, y) -> float:
    model.eval()
    out = sum(float(F.cross_entropy(model(x[i:i + 5000]), y[i:i + 5000], reduction="sum"))
              for i in range(0, x.shape[0], 5000)) / x.shape[0]
    model.train()
    return out


def run(method: str, tau: float, x, y, epochs: int, batch: int, tau_theta: float,
        variant: str) -> dict:
    model = M.mlp(784, (256, 256), 10, seed=0)
    if METHODS[method] is not None:
        proxprop(model, tau_theta=tau_theta, solver="cg", cg_iters=METHODS[method],
                 cg_variant=variant)
    opt = torch.optim.SGD(model.parameters(), lr=tau, momentum=0.95, nesterov=True)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    status, curve = "finished", [full_loss(model, x, y)]
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], batch):
            idx = perm[i:i + batch]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        if not math.isfinite(float(loss.detach())):
            status = "diverged"
            break
        curve.append(full_loss(model, x, y))
        if not math.isfinite(curve[-1]):
            status = "diverged"
            break
    return {"method": method, "tau": tau, "tau_theta": tau_theta, "epochs": epochs,
            "cg_variant": variant if METHODS[method] is not None else "-",
            "batch": batch, "n_train": int(x.shape[0]), "status": status,
            "final_loss": curve[-1] if status == "finished" else None, "curve": curve,
            "seconds": time.perf_counter() - t0}


def fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if v >= 1e-2 else f"{v:.1e}"


def adam_part(args) -> None:
    from beyondsgd.bench.run.runner import run_trial

    out = Path(args.out.replace("table1", "adam"))
    out.parent.mkdir(parents=True, exist_ok=True)
    frac = args.train / 55000
    rows = []
    for method, hp in (("adam", {"lr": 1e-3}),
                       ("proxprop", {"lr": 1e-3, "tau_theta": args.tau_theta, "cg_iters": 3})):
        for seed in range(args.seeds):
            res = run_trial("fmnist_2c2d", method, hp, seed=seed, epochs=args.epochs,
                            train_fraction=frac)
            r = {"method": method, "hp": hp, "seed": seed, "status": res.status,
                 "n_train": args.train, "evals": res.evals}
            rows.append(r)
            with out.open("a") as f:
                f.write(json.dumps(r) + "\n")
            for e in res.evals:
                print(f"{method:9s} seed {seed} epoch {e['epoch']}  {e['train_seconds']:7.1f}s  "
                      f"train loss {e['train_loss']:.4f}  test acc {e['test_metric']:.4f}",
                      flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--tau-theta", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--part", choices=("table1", "adam"), default="table1")
    ap.add_argument("--cg-variant", choices=("textbook", "official"), default="textbook")
    ap.add_argument("--seeds", type=int, default=1, help="seeds for --part adam")
    ap.add_argument("--out", default="results/proxprop_table1.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.part == "adam":
        return adam_part(args)
    d = load_fashion_mnist(seed=0)
    idx = torch.randperm(d.x_train.shape[0], generator=torch.Generator().manual_seed(0))
    idx = idx[:args.train]
    x, y = d.x_train[idx], d.y_train[idx]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            variant = r.get("cg_variant", "textbook-abs" if r["method"] != "backprop" else "-")
            done[(r["method"], r["tau"], r["tau_theta"], r["epochs"], r["n_train"], variant)] = r

    def key(method: str, tau: float) -> tuple:
        variant = args.cg_variant if METHODS[method] is not None else "-"
        return (method, tau, args.tau_theta, args.epochs, args.train, variant)

    for method in METHODS:
        for tau in TAUS:
            if key(method, tau) in done:
                continue
            r = run(method, tau, x, y, args.epochs, args.batch, args.tau_theta, args.cg_variant)
            done[key(method, tau)] = r
            with out.open("a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"{method:8s} tau={tau:<6g} {r['status']:8s} loss {fmt(r['final_loss'])} "
                  f"({r['seconds']:.0f}s)", flush=True)
    print(f"\nFull-batch training loss after {args.epochs} epochs ({args.train} Fashion-MNIST "
          f"images, MLP 784-256-256-10, Nesterov 0.95, batch {args.batch}, "
          f"tau_theta {args.tau_theta}, cg_variant {args.cg_variant}); '-' = diverged (NaN), "
          "'!' = no lower than the initial loss.  [paper, 50 epochs, CIFAR-10]")
    print("tau      " + "".join(f"{t:>16g}" for t in TAUS))
    for method in METHODS:
        cells = []
        for j, tau in enumerate(TAUS):
            r = done[key(method, tau)]
            stuck = "!" if r["final_loss"] is not None and r["final_loss"] >= r["curve"][0] \
                else ""
            cells.append(f"{fmt(r['final_loss'])}{stuck} [{fmt(PAPER[method][j])}]")
        print(f"{method:9s}" + "".join(f"{c:>16s}" for c in cells))


if __name__ == "__main__":
    main()
