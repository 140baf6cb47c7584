"""ProxProp in float32: how far each solver path's direction is from its float64 result.

Networks (Fashion-MNIST training images, PyTorch default init, seed 0):

* ``convnet``: the paper's ConvNet (``proxprop_convnet``, one input channel, 28x28): conv1
  1->16, conv2 16->20, conv3 20->20 (5x5, pad 2), FC output layer (explicit, not measured);
* ``mlp``: ``fmnist_mlp`` 784-256-256-10;
* ``wide``: the paper's widths 784-4000-1000-4000-10 (batch-space CG and Woodbury only: the
  K x K Gram of the 4001-wide layers is too slow in float64 on a CPU).

One float64 forward/backward (mean cross-entropy) gives every proximal layer its input ``a``
and BackProp signal ``dJ/dz``. Each path then computes the direction twice from the *same*
inputs: in float64, and from the inputs rounded to float32 (what a float32 layer computes).
Reported per layer: ``||d32 - d64|| / ||d64||``, and both directions' relative distance from
the exact proximal direction (float64 dense solve), to see whether the float32 iterate is a
worse approximation or only a different one. This isolates the solve: a whole float32 network
also differs from its float64 twin in the BackProp signal itself (ReLU/max-pool decisions near
ties); that is the ``backprop`` row (plain autograd gradient, float32 net vs float64 net).

Paths: Conv2d ``matrix_free`` (a convolution and its weight adjoint per iteration), ``gram``
(CG on the explicit unfolded Gram), ``exact``; Linear ``dual`` (batch-space CG), ``primal``,
``gram``, ``exact``. tau_theta 1, ``cg_tol=0`` (exactly N iterations), default ``cg_eps``.
Run (about a minute, one thread)::

    OMP_NUM_THREADS=1 python benchmarks/proxprop_precision.py --out results/proxprop_precision.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from proxprop_official_parity import capture, rel  # one layer capture, one distance
from torch import nn

from beyondsgd import models as M
from beyondsgd.data import load_fashion_mnist
from beyondsgd.methods.proxprop import (
    ConvGeometry,
    ProxConfig,
    conv2d_prox_direction,
    linear_prox_direction,
)

DT = torch.float64
ITERS = (3, 5, 10)
NETS = {  # name -> (builder, input shape per sample, batch, linear paths)
    "convnet": (lambda: M.proxprop_convnet(1, image_size=28, seed=0), (1, 28, 28), 256, ()),
    "mlp": (lambda: M.mlp(784, [256, 256], 10, seed=0), (784,), 128,
            ("dual", "primal", "gram")),
    "wide": (lambda: M.mlp(784, [4000, 1000, 4000], 10, seed=0), (784,), 500, ("dual",)),
}


def _layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The proximal layers: every Linear/Conv2d but the last one called (the output layer)."""
    found = [(n, m) for n, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return found[:-1]


def _capture(net: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Layer inputs, dJ/dz and [dJ/dW, dJ/db] of every proximal layer (one backward)."""
    out = {}
    for n, (m, a, _, gz) in capture(net, x, y).items():
        gth = torch.cat([m.weight.grad.flatten(1), m.bias.grad[:, None]], 1)
        out[n] = (m, a, gz, gth.detach())
    return out


def _direction(m, a, gz, gth, path: str, iters: int) -> torch.Tensor:
    solver = "exact" if path == "exact" else "cg"
    if isinstance(m, nn.Conv2d):
        cg_path = {"matrix_free": "primal", "gram": "gram", "exact": "auto"}[path]
        cfg = ProxConfig(solver=solver, cg_iters=iters, cg_tol=0.0, cg_path=cg_path)
        geo = ConvGeometry(tuple(m.stride), tuple(m.padding), tuple(m.dilation), m.groups)
        return conv2d_prox_direction(a, gth, m.weight.shape, True, geo, cfg)
    cfg = ProxConfig(solver=solver, cg_iters=iters, cg_tol=0.0,
                     cg_path="auto" if path == "exact" else path)
    return linear_prox_direction(a.reshape(-1, a.shape[-1]), gz.reshape(-1, gz.shape[-1]),
                                 None, True, cfg)


def measure(name: str, data) -> list[dict]:
    build, shape, batch, lin_paths = NETS[name]
    x = data.x_train[:batch].reshape(batch, *shape)
    y = data.y_train[:batch]
    net64 = build().to(DT)
    layers = _capture(net64, x.to(DT), y)
    net32 = build()
    _capture(net32, x.float(), y)  # the whole network in float32: only for the backprop row
    g32 = {n: torch.cat([m.weight.grad.flatten(1), m.bias.grad[:, None]], 1)
           for n, m in _layers(net32)}
    rows = []
    for n, (m, a, gz, gth) in layers.items():
        kind = "conv" if isinstance(m, nn.Conv2d) else "linear"
        rows.append(dict(net=name, layer=n, kind=kind, path="backprop", iters=0,
                         rel_f32_f64=rel(g32[n], gth)))
        exact = _direction(m, a, gz, gth, "exact", 1)
        paths = ("matrix_free", "gram", "exact") if kind == "conv" else (*lin_paths, "exact")
        for path in paths:
            for it in ((1,) if path == "exact" else ITERS):
                t0 = time.perf_counter()
                d64 = _direction(m, a, gz, gth, path, it)
                d32 = _direction(m, a.float(), gz.float(), gth.float(), path, it)
                rows.append(dict(net=name, layer=n, kind=kind, path=path, iters=it,
                                 rel_f32_f64=rel(d32, d64), f64_vs_exact=rel(d64, exact),
                                 f32_vs_exact=rel(d32, exact),
                                 seconds=round(time.perf_counter() - t0, 2)))
                print(f"{name:8s} {n:3s} {kind:6s} {path:11s} N={it:<3d} f32 vs f64 "
                      f"{rows[-1]['rel_f32_f64']:.1e}   vs exact: f64 "
                      f"{rows[-1]['f64_vs_exact']:.3f} f32 {rows[-1]['f32_vs_exact']:.3f}",
                      flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/proxprop_precision.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_fashion_mnist(seed=0)
    rows = []
    for name in args.nets.split(","):
        rows += measure(name, data)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"batch": {k: v[2] for k, v in NETS.items()}, "rows": rows},
                              indent=1) + "\n")
    print("\nmax ||d32 - d64|| / ||d64|| over layers, per layer type and path:")
    keys = sorted({(r["kind"], r["path"], r["iters"]) for r in rows})
    for kind, path, it in keys:
        sel = [r for r in rows if (r["kind"], r["path"], r["iters"]) == (kind, path, it)]
        worst = max(sel, key=lambda r: r["rel_f32_f64"])
        print(f"  {kind:6s} {path:11s} N={it:<3d} {worst['rel_f32_f64']:.1e} "
              f"({worst['net']} layer {worst['layer']})")


if __name__ == "__main__":
    main()
