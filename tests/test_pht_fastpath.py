"""The autograd-free fast paths of the PHT alternation (``methods/pht/fastpath.py``) are
bit-identical to the autograd code they replace: every comparison here is ``torch.equal`` (or
``==`` on floats), never a tolerance, with ``fastpath.ENABLED = False`` as the reference."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from beyondsgd.bench.run.runner import run_trial
from beyondsgd.methods.pht import fastpath
from beyondsgd.methods.pht.fastpath import LinearCE
from beyondsgd.methods.pht.solvers import solve_layer


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
    fastpath.ENABLED = True


def _autograd_closure(layer, h, y, damping, start):
    """The closure of ``solvers._lbfgs_layer`` as written there (autograd)."""
    params = [p for p in layer.parameters() if p.requires_grad]
    with torch.enable_grad():
        loss = F.cross_entropy(nn.Sequential()(layer(h)), y)
        if damping > 0:
            loss = loss + 0.5 * damping * sum(((p - s) ** 2).sum()
                                              for p, s in zip(params, start, strict=True))
        grads = torch.autograd.grad(loss, params)
    return loss.detach(), grads


def _case(seed: int):
    rng = random.Random(seed)
    dt = rng.choice([torch.float32, torch.float64])
    n = rng.choice([1, 2, 3, 7, 9, 17, 63, 64, 65, 333, 1079])
    d = rng.choice([1, 3, 13, 40, 64, 128, 256])
    c = rng.choice([1, 2, 3, 10, 17])
    bias = rng.random() < 0.75
    damping = rng.choice([0.0, 1e-3, 1e-7, 0.37, 5.0])
    torch.manual_seed(seed)
    layer = nn.Linear(d, c, bias=bias).to(dt)
    start = [p.detach().clone() for p in layer.parameters()]
    with torch.no_grad():  # away from the start, so the proximal term is not zero
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * rng.choice([0.01, 0.3, 3.0]))
    h = torch.randn(n, d, dtype=dt) * rng.choice([0.1, 1.0, 10.0])
    y = torch.randint(0, c, (n,))
    return layer, h, y, damping, start


@pytest.mark.parametrize("block", range(6))
def test_linear_ce_closure_equals_the_autograd_closure_bit_for_bit(block):
    """Loss and gradients of the fast closure == the autograd closure's (torch.equal, and the
    same strides) over random shapes: 1 row and row counts off the multiples of 8, 1 class,
    with and without bias, float32 and float64, damping 0 and > 0."""
    for seed in range(block * 50, block * 50 + 50):
        layer, h, y, damping, start = _case(seed)
        want_loss, want = _autograd_closure(layer, h, y, damping, start)
        fast = LinearCE.make(layer, nn.Sequential(), h, y, "cross_entropy")
        assert fast is not None
        params = list(layer.parameters())
        got_loss = fast.closure(params, start, damping)()
        assert torch.equal(got_loss, want_loss), seed
        assert fast.objective() is not None
        assert torch.equal(fast.objective(), F.cross_entropy(layer(h), y).detach()), seed
        for p, g in zip(params, want, strict=True):
            assert torch.equal(p.grad, g), seed
            assert p.grad.stride() == g.stride() and p.grad.dtype == g.dtype, seed


@pytest.mark.filterwarnings("ignore:Anomaly Detection")
def test_fast_path_applies_only_where_it_is_exact():
    layer, h, y = nn.Linear(8, 3), torch.randn(5, 8), torch.randint(0, 3, (5,))
    tail = nn.Sequential()
    assert LinearCE.make(layer, tail, h, y, "cross_entropy") is not None
    assert LinearCE.make(layer, tail, h, y, "mse") is None
    assert LinearCE.make(layer, tail, h, y, F.cross_entropy) is None  # a callable: unknown
    assert LinearCE.make(layer, nn.Sequential(nn.Identity()), h, y, "cross_entropy") is None
    assert LinearCE.make(layer, tail, h.requires_grad_(), y, "cross_entropy") is None
    h = h.detach()
    assert LinearCE.make(layer, tail, h, y.float(), "cross_entropy") is None
    assert LinearCE.make(layer, tail, h.half(), y, "cross_entropy") is None
    handle = layer.register_forward_hook(lambda *a: None)
    assert LinearCE.make(layer, tail, h, y, "cross_entropy") is None
    handle.remove()
    handle = layer.weight.register_hook(lambda g: g * 2)
    assert LinearCE.make(layer, tail, h, y, "cross_entropy") is None
    handle.remove()
    with torch.autograd.graph.save_on_cpu():
        assert LinearCE.make(layer, tail, h, y, "cross_entropy") is None
    with torch.autograd.detect_anomaly(check_nan=False):
        assert LinearCE.make(layer, tail, h, y, "cross_entropy") is None
    layer.bias.requires_grad_(False)
    assert LinearCE.make(layer, tail, h, y, "cross_entropy") is None
    layer.bias.requires_grad_(True)
    fastpath.ENABLED = False
    assert LinearCE.make(layer, tail, h, y, "cross_entropy") is None


def _solve(seed: int, enabled: bool):
    layer, h, y, damping, _ = _case(seed)
    fastpath.ENABLED = enabled
    try:
        info = solve_layer(nn.Sequential(layer), 0, h, y, "cross_entropy", [], "auto", 20,
                           damping)
    finally:
        fastpath.ENABLED = True
    return info, [p.detach().clone() for p in layer.parameters()]


@pytest.mark.parametrize("seed", range(24))
def test_whole_layer_solves_equal_the_autograd_solves(seed):
    """``solve_layer`` (20 L-BFGS iterations, strong Wolfe) ends on the same bits with the fast
    closure as with the autograd one, and reports the same losses before and after."""
    want, want_p = _solve(seed, False)
    got, got_p = _solve(seed, True)
    assert got == want
    assert all(torch.equal(a, b) for a, b in zip(got_p, want_p, strict=True))


def _trial(problem: str, epochs: int, enabled: bool, hp: dict | None = None):
    made = []
    make = LinearCE.make

    def counting(*args):
        out = make(*args)
        made.append(out is not None)
        return out

    fastpath.ENABLED = enabled
    LinearCE.make = counting
    try:
        res = run_trial(problem, "pht_alt", hp or {}, seed=0, epochs=epochs)
    finally:
        LinearCE.make = make
        fastpath.ENABLED = True
    assert res.status == "finished", res.error
    timing = ("train_seconds", "train_cpu_seconds", "seconds", "wall_seconds")
    evals = [{k: v for k, v in e.items() if k not in timing} for e in res.evals]
    events = [{k: v for k, v in e.items() if k not in timing} for e in res.events]
    return evals, events, res.model.state_dict(), made


@pytest.mark.parametrize("problem, epochs, hp", [
    ("digits_mlp", 2, None),
    ("mnist1d_mlp", 1, None),
    ("digits_mlp", 2, {"layer_solve_on": "step", "damping": 1e-2}),
])
def test_pht_alt_trials_equal_the_autograd_code(problem, epochs, hp):
    """Whole ``pht_alt`` trials: evaluations, events (timings aside) and final weights equal
    with and without the fast paths, and the fast path did run in them."""
    want = _trial(problem, epochs, False, hp)
    got = _trial(problem, epochs, True, hp)
    assert got[0] == want[0]
    assert got[1] == want[1]
    assert got[2].keys() == want[2].keys()
    assert all(torch.equal(got[2][k], want[2][k]) for k in want[2])
    assert got[3] and all(got[3]) and not any(want[3])
