"""BPGrad vs the official code on a short last minibatch (issue 22): how far apart are the
weights after 33 steps, with and without ``nominal_batch_size``?

The official MatConvNet code (``cnn_train_v2_cifar_BPGrad.m``) sums the loss over a batch of
``b`` samples, takes the norm of that sum divided by the *nominal* batch size ``N``, but the
direction of that sum divided by ``b``: on a short batch its direction is ``N / b`` times longer
than unit, and its running-mean loss weights batches by their samples. ``reference`` below is
that update written out on a flat float64 vector; it is compared with ``BPGrad`` (official
momentum form and running mean) as it was (true mean gradient) and with
``nominal_batch_size=N``.

digits_mlp (1079 training rows, batch 64: 16 full batches and one of 55 per epoch: the 33 steps
hold one short batch) and diabetes_mlp (266 rows, batch 32: 8 full and one of 10 per epoch: three
short batches in 33 steps). Distance: ||w - w_official|| / ||w_official - w_0|| after 33 steps.
One line per problem, L and seed:

    OMP_NUM_THREADS=1 python benchmarks/bpgrad_parity.py     # seeds 0-4, L = 50 and 10
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.func import functional_call

from beyondsgd.bench.problems import get_problem
from beyondsgd.methods.bpgrad import BPGrad

STEPS, RHO, MU, WD = 33, 0.1, 0.9, 5e-4  # official rho, momentum, weight decay


def batches(n: int, batch: int, steps: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out: list[torch.Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=g)
        out += [perm[i:i + batch] for i in range(0, n, batch)]
    return out[:steps]


def epoch_starts(n: int, batch: int, steps: int) -> set[int]:
    per = -(-n // batch)
    return set(range(0, steps, per))


def reference(model, loss_fn, x, y, idx, nominal, L, starts):
    """The official update on a flat vector (sum loss, norm of sum / N, direction sum / b)."""
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    s_buf = torch.zeros_like(w)
    hist, total, count = [], 0.0, 0

    def unflat(v):
        out, i = {}, 0
        for name, shp in zip(names, shapes):
            k = shp.numel()
            out[name] = v[i:i + k].reshape(shp)
            i += k
        return out

    for t, rows in enumerate(idx):
        if t in starts:
            total, count = 0.0, 0
        b = rows.numel()
        wg = w.clone().requires_grad_(True)
        # the problem's mean loss times b: the sum over the batch's samples
        s = loss_fn(functional_call(model, unflat(wg), (x[rows],)), y[rows]) * b
        (dzdw,) = torch.autograd.grad(s, wg)
        total, count = total + float(s.detach()), count + b
        hist.append(total / count)
        eta = (hist[-1] - RHO * min(hist)) / L
        d = (dzdw / b + WD * w) / torch.linalg.vector_norm(dzdw / nominal)
        s_buf = MU * s_buf - d
        w = w + eta * s_buf
    return w


def ours(model, loss_fn, x, y, idx, nominal, L, starts, parity):
    opt = BPGrad(model.parameters(), lipschitz=L, rho=RHO, momentum=MU, weight_decay=WD,
                 momentum_form="official", loss_estimate="running_mean",
                 nominal_batch_size=nominal if parity else None)
    for t, rows in enumerate(idx):
        if t in starts and t:
            opt.new_epoch()

        def closure(rows=rows):
            opt.zero_grad()
            loss = loss_fn(model(x[rows]), y[rows])
            loss.backward()
            return loss

        opt.step(closure, **({"batch_size": rows.numel()} if parity else {}))
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--lipschitz", default="50,10")
    ap.add_argument("--problems", default="digits_mlp,diabetes_mlp")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name in args.problems.split(","):
        prob = get_problem(name)
        data = prob.load(0)
        x = data.x_train.double()
        y = data.y_train.double() if data.y_train.is_floating_point() else data.y_train
        n, batch = x.shape[0], prob.batch_size
        starts = epoch_starts(n, batch, STEPS)
        for L in (float(v) for v in args.lipschitz.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                idx = batches(n, batch, STEPS, seed)
                base = prob.build_model(data, "relu", seed).double()
                w0 = torch.cat([p.detach().reshape(-1) for p in base.parameters()])
                ref = reference(base, prob.loss_fn, x, y, idx, batch, L, starts)
                row = {"problem": name, "lipschitz": L, "seed": seed, "steps": STEPS,
                       "batch": batch, "short": sorted({r.numel() for r in idx} - {batch}),
                       "short_batches": sum(1 for r in idx if r.numel() < batch)}
                for parity in (False, True):
                    m = prob.build_model(data, "relu", seed).double()
                    w = ours(m, prob.loss_fn, x, y, idx, batch, L, starts, parity)
                    key = "with_nominal_batch_size" if parity else "true_mean"
                    # distance to the official weights, relative to how far those moved
                    row[key] = float((w - ref).norm() / (ref - w0).norm())
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
