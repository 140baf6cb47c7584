"""ProxProp CG against the official code's iteration, on the real layers of two networks.

The reference is the official CG loop (tfrerix/proxprop) as ``../shared/papers/proxprop.md``
describes it, written here from that description (no code of that repository): warm start at
the old parameters ``X = theta``, residual ``R = A^T z~ + beta theta - (A^T A + beta I) X``
with the target ``z~ = z - dJ/dz`` (one extra Gram product), ``P = R`` *aliased* (the
in-place residual update also changes P) or, "fixed", a copy; step ``|R|^2 / (P^T M P +
eps)`` and coefficient ``|R_new|^2 / (|R|^2 + eps)`` with an absolute eps, one CG per output
unit of a Linear layer and one CG over all weights and the bias of a Conv2d, the relative
stopping rule (tol 1e-2), the direction ``theta - X``. Operators come from autograd
(``A``: the layer's forward with the parameters as variables; ``A^T``: its vector-Jacobian
product), not from the library's Gram code. Everything in float64.

Rows (relative differences ``||d - d_ref|| / ||d_ref||``, per layer):

* ``textbook (default) vs fixed official``: our default CG (``cg_eps=1e-6`` relative to the
  residual, ``cg_tol`` 1e-2) against the alias-fixed official loop with its absolute eps 1e-6,
  both with the official blocking (``cg_block="layer"`` for our Conv2d CG);
* ``textbook eps 0 vs fixed official eps 0`` (``cg_tol=0``; the official eps is 1e-300, 0
  but for the 0/0 of a dead unit);
* ``official variant vs official``: ``cg_variant="official"`` with the default ``cg_block``
  against the (aliased) official loop, eps 1e-6;
* ``(cold)``: the same comparisons against the official loop run on ``M d = grad J`` from
  ``d = 0`` (no warm start): the warm start's initial residual ``A^T z~ + beta theta - M
  theta`` and ``theta - X`` cancel large terms, which is the official form's own float64
  round-off (``official warm vs cold``), amplified by later CG iterations;
* ``... vs exact``: distance of each from the exact proximal direction (dense solve).

Networks: the paper's ConvNet (``proxprop_convnet``, one input channel, 28x28) and
``fmnist_mlp`` 784-256-256-10, Fashion-MNIST training images, PyTorch default init, seed 0,
mean cross-entropy, tau_theta 1, N = 3, 5, 10, batches 64 and 256. Run::

    OMP_NUM_THREADS=1 python benchmarks/proxprop_official_parity.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
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
NETS = {
    "convnet": (lambda: M.proxprop_convnet(1, image_size=28, seed=0), (1, 28, 28)),
    "mlp": (lambda: M.mlp(784, [256, 256], 10, seed=0), (784,)),
}


def capture(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Input, output and dJ/dz of every Linear/Conv2d but the output layer."""
    layers = [(n, m) for n, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    seen, hooks = {}, []
    for n, m in layers[:-1]:
        def hook(mod, inp, out, n=n):
            out.retain_grad()
            seen[n] = (mod, inp[0].detach(), out)
        hooks.append(m.register_forward_hook(hook))
    F.cross_entropy(net(x), y).backward()
    for h in hooks:
        h.remove()
    return {n: (m, a, z.detach(), z.grad.detach()) for n, (m, a, z) in seen.items()}


def official_cg(m: nn.Module, a: torch.Tensor, z: torch.Tensor, gz: torch.Tensor, iters: int,
                eps: float, aliased: bool, tol: float = 1e-2, beta: float = 1.0,
                warm: bool = True) -> torch.Tensor:
    """The official loop (module docstring); returns theta - X as rows [W.flatten(1), b].
    ``warm=False``: the same loop on M d = grad J from d = 0 (no warm start, so no
    cancellation in the initial residual and in theta - X; not what the official code does),
    to tell the official form's own float64 round-off from a difference of iteration."""
    conv = isinstance(m, nn.Conv2d)
    w_shape = m.weight.shape

    def forward(rows: torch.Tensor) -> torch.Tensor:  # A theta
        w, b = rows[:, :-1].reshape(w_shape), rows[:, -1]
        if conv:
            return F.conv2d(a, w, b, m.stride, m.padding, m.dilation, m.groups)
        return F.linear(a, w, b)

    def adjoint(u: torch.Tensor) -> torch.Tensor:  # A^T u by autograd
        v = torch.zeros(w_shape[0], w_shape[1:].numel() + 1, dtype=DT, requires_grad=True)
        (g,) = torch.autograd.grad(forward(v), v, u)
        return g

    def gram(v: torch.Tensor) -> torch.Tensor:  # (A^T A + beta I) v
        return adjoint(forward(v)) + beta * v

    def dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # per block
        return (u * v).sum().reshape(1, 1) if conv else (u * v).sum(1, keepdim=True)

    theta = torch.cat([m.weight.detach().flatten(1), m.bias.detach()[:, None]], 1)
    if not warm:  # theta = 0, z = 0: R = -A^T gz exactly, and theta - X = -X
        theta, z = torch.zeros_like(theta), torch.zeros_like(z)
    x = theta.clone()
    r = adjoint(z - gz) + beta * theta - gram(x)
    p = r if aliased else r.clone()
    rs = dot(r, r)
    threshold = tol ** 2 * rs.mean()
    for i in range(iters):
        ap = gram(p)
        alpha = rs / (dot(p, ap) + eps)
        x += alpha * p
        if i == iters - 1:
            break
        r -= alpha * ap  # in place: P changes with it when aliased
        rs_new = dot(r, r)
        if rs_new.max() < threshold:
            break
        p = r + rs_new / (rs + eps) * p
        rs = rs_new
    return theta - x


def ours(m: nn.Module, a: torch.Tensor, gz: torch.Tensor, **cfg) -> torch.Tensor:
    cfg = ProxConfig(**cfg)
    if isinstance(m, nn.Conv2d):
        gth = torch.cat([m.weight.grad.flatten(1), m.bias.grad[:, None]], 1)
        geo = ConvGeometry(tuple(m.stride), tuple(m.padding), tuple(m.dilation), m.groups)
        return conv2d_prox_direction(a, gth, m.weight.shape, True, geo, cfg)
    return linear_prox_direction(a, gz, None, True, cfg)


def rel(u: torch.Tensor, ref: torch.Tensor) -> float:
    """||u - ref|| / ||ref||, with ``u`` taken to float64 (a float32 direction vs a float64 one)."""
    return float((u.double() - ref).norm() / ref.norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--iters", default="3,5,10")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/proxprop_official_parity.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_fashion_mnist(seed=0)
    rows = []
    for net_name, (build, shape) in NETS.items():
        for batch in map(int, args.batches.split(",")):
            x = data.x_train[:batch].reshape(batch, *shape).to(DT)
            layers = capture(build().to(DT), x, data.y_train[:batch])
            for name, (m, a, z, gz) in layers.items():
                exact = ours(m, a, gz, solver="exact")
                for n in map(int, args.iters.split(",")):
                    fixed = official_cg(m, a, z, gz, n, 1e-6, aliased=False)
                    # eps 1e-300: 0 but for the 0/0 of a dead unit (ours: step 0 there)
                    fixed0 = official_cg(m, a, z, gz, n, 1e-300, aliased=False, tol=0.0)
                    official = official_cg(m, a, z, gz, n, 1e-6, aliased=True)
                    block = "layer" if isinstance(m, nn.Conv2d) else "unit"  # as official
                    textbook = ours(m, a, gz, cg_iters=n, cg_block=block)
                    textbook0 = ours(m, a, gz, cg_iters=n, cg_eps=0.0, cg_tol=0.0,
                                     cg_block=block)
                    variant = ours(m, a, gz, cg_iters=n, cg_variant="official")
                    cold = official_cg(m, a, z, gz, n, 1e-6, aliased=True, warm=False)
                    cold0 = official_cg(m, a, z, gz, n, 1e-300, aliased=False, tol=0.0,
                                        warm=False)
                    r = dict(net=net_name, batch=batch, layer=name,
                             kind="conv" if isinstance(m, nn.Conv2d) else "linear", iters=n,
                             textbook_vs_fixed=rel(textbook, fixed),
                             textbook_eps0_vs_fixed_eps0=rel(textbook0, fixed0),
                             variant_vs_official=rel(variant, official),
                             textbook_eps0_vs_fixed_eps0_cold=rel(textbook0, cold0),
                             variant_vs_official_cold=rel(variant, cold),
                             official_warm_vs_cold=rel(official, cold),
                             textbook_vs_exact=rel(textbook, exact),
                             fixed_vs_exact=rel(fixed, exact),
                             official_vs_exact=rel(official, exact))
                    rows.append(r)
                    print(f"{net_name:7s} B={batch:<3d} {name:2s} N={n:<2d} textbook vs fixed "
                          f"{r['textbook_vs_fixed']:.1e}  eps0 "
                          f"{r['textbook_eps0_vs_fixed_eps0']:.1e} (cold "
                          f"{r['textbook_eps0_vs_fixed_eps0_cold']:.1e})  variant vs official "
                          f"{r['variant_vs_official']:.1e} (cold "
                          f"{r['variant_vs_official_cold']:.1e}, official warm vs cold "
                          f"{r['official_warm_vs_cold']:.1e})  vs exact: "
                          f"ours {r['textbook_vs_exact']:.3f} fixed {r['fixed_vs_exact']:.3f} "
                          f"official {r['official_vs_exact']:.3f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    for key in ("textbook_vs_fixed", "textbook_eps0_vs_fixed_eps0",
                "textbook_eps0_vs_fixed_eps0_cold", "variant_vs_official",
                "variant_vs_official_cold", "official_warm_vs_cold"):
        for kind in ("conv", "linear"):
            for batch in map(int, args.batches.split(",")):
                v = [r[key] for r in rows if r["kind"] == kind and r["batch"] == batch]
                print(f"{key:28s} {kind:6s} B={batch:<3d} {min(v):.1e} .. {max(v):.1e}")


if __name__ == "__main__":
    main()
