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
    from beyondsgd.methods.pht import alternating

    made, stepped = [], []
    make, step = LinearCE.make, alternating.alternation_step

    def counting(*args):
        out = make(*args)
        made.append(out is not None)
        return out

    def counting_step(*args):
        out = step(*args)
        stepped.append(out is not None)
        return out

    fastpath.ENABLED = enabled
    LinearCE.make, alternating.alternation_step = counting, counting_step
    try:
        res = run_trial(problem, "pht_alt", hp or {}, seed=0, epochs=epochs)
    finally:
        LinearCE.make, alternating.alternation_step = make, step
        fastpath.ENABLED = True
    assert res.status == "finished", res.error
    timing = ("train_seconds", "train_cpu_seconds", "seconds", "wall_seconds")
    evals = [{k: v for k, v in e.items() if k not in timing} for e in res.evals]
    events = [{k: v for k, v in e.items() if k not in timing} for e in res.events]
    return evals, events, res.model.state_dict(), (made, stepped)


@pytest.mark.parametrize("problem, epochs, hp", [
    ("digits_mlp", 2, None),
    ("mnist1d_mlp", 1, None),
    ("digits_mlp", 2, {"layer_solve_on": "step", "damping": 1e-2}),
    ("digits_mlp", 2, {"refresh": "epoch", "inner": "sgd", "lr": 0.05}),
])
def test_pht_alt_trials_equal_the_autograd_code(problem, epochs, hp):
    """Whole ``pht_alt`` trials: evaluations, events (timings aside) and final weights equal
    with and without the fast paths (solve and steps), and both fast paths ran in them."""
    want = _trial(problem, epochs, False, hp)
    got = _trial(problem, epochs, True, hp)
    assert got[0] == want[0]
    assert got[1] == want[1]
    assert got[2].keys() == want[2].keys()
    assert all(torch.equal(got[2][k], want[2][k]) for k in want[2])
    for ran, off in zip(got[3], want[3], strict=True):
        assert ran and all(ran) and not any(off)


# ---- the K frozen-support steps of Alternating.step -----------------------------------------
def _mlp(seed, dims, bias, dtype, flatten):
    from beyondsgd.methods.pht import PositiveHardThreshold

    torch.manual_seed(seed)
    mods: list[nn.Module] = [nn.Flatten()] if flatten else []
    for i in range(len(dims) - 1):
        mods.append(nn.Linear(dims[i], dims[i + 1], bias=bias))
        if i < len(dims) - 2:
            mods.append(PositiveHardThreshold(0.1))
    return nn.Sequential(*mods).to(dtype)


_OPTS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05),
    "momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-4),
    "adam_foreach": lambda ps: torch.optim.Adam(ps, lr=1e-2, foreach=True),  # _FlatAdam
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
}
_LOSSES = {
    "builtin": None,                                                   # alt.loss, kernels
    "ce_fn": lambda o, t: F.cross_entropy(o, t),                       # CE graph recognised
    "smooth": lambda o, t: F.cross_entropy(o, t, label_smoothing=0.1),  # autograd on the loss
    "sum": lambda o, t: F.cross_entropy(o, t, reduction="sum") * 0.5,
}


def _step_case(seed):
    from beyondsgd.methods.pht.alternating import Alternating

    rng = random.Random(1000 + seed)
    dt = rng.choice([torch.float32, torch.float64])
    flatten = rng.random() < 0.3
    d_in = 16 if flatten else rng.choice([1, 5, 64])
    dims = [d_in] + [rng.choice([1, 7, 64, 128]) for _ in range(rng.choice([1, 2, 3]))] + \
        [rng.choice([2, 10])]
    n = rng.choice([1, 3, 17, 64])
    net = _mlp(seed, dims, rng.random() < 0.75, dt, flatten)
    opt = _OPTS[rng.choice(list(_OPTS))](net.parameters())
    alt = Alternating(net, opt, "cross_entropy", rng.choice([1, 2, 5]))
    x = torch.randn(n, 1, 4, 4, dtype=dt) if flatten else torch.randn(n, d_in, dtype=dt)
    y = torch.randint(0, dims[-1], (n,))
    return alt, x, y, rng.choice(list(_LOSSES)), rng.random() < 0.4


def _run_steps(alt, x, y, loss, per_epoch, enabled, rounds=3):
    fastpath.ENABLED = enabled
    out = []
    try:
        if per_epoch:
            alt.refresh(torch.cat([x, x]))
        for r in range(rounds):
            index = torch.arange(x.shape[0]) + (r % 2) * x.shape[0] if per_epoch else None
            if enabled:  # the fast path itself, so that a refusal shows
                got = fastpath.alternation_step(alt, x, y, index, None, _LOSSES[loss])
                assert got is not None
            else:
                got = alt.step(x, y, index, loss_fn=_LOSSES[loss])
            out.append(got)
    finally:
        fastpath.ENABLED = True
    return out


@pytest.mark.parametrize("block", range(4))
def test_alternation_steps_equal_the_autograd_steps_bit_for_bit(block):
    """Random MLPs (1-3 PHT layers, widths 1-128, with and without bias, a leading Flatten),
    batches of 1-64 rows, float32/float64, SGD/momentum/Adam (flat and per-tensor), K = 1-5,
    per-minibatch and per-epoch supports, the built-in loss and loss_fn callables (one the
    cross-entropy graph, others through autograd on the loss alone): the returned losses, the
    weights, the gradients, the optimizer states and the recorded supports are equal."""
    import copy

    for seed in range(block * 12, block * 12 + 12):
        alt, x, y, loss, per_epoch = _step_case(seed)
        twin = copy.deepcopy(alt)
        twin.__init__(twin.model, twin.optimizer, "cross_entropy", twin.inner_steps)
        want = _run_steps(twin, x, y, loss, per_epoch, False)
        got = _run_steps(alt, x, y, loss, per_epoch, True)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), seed
        for p, q in zip(alt.model.parameters(), twin.model.parameters(), strict=True):
            assert torch.equal(p, q) and torch.equal(p.grad, q.grad), seed
        sa, sb = alt.optimizer.state_dict()["state"], twin.optimizer.state_dict()["state"]
        assert sa.keys() == sb.keys()
        for k in sa:
            for name, v in sa[k].items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb[k][name])), seed
        assert all(torch.equal(a, b) for a, b in zip(alt.last_masks, twin.last_masks,
                                                     strict=True)), seed


def test_a_loss_that_reads_the_weights_takes_the_autograd_step():
    """A loss_fn whose graph reaches the weights: those steps run through autograd (the fast
    path would miss that gradient), still equal to step()."""
    import copy

    from beyondsgd.methods.pht.alternating import Alternating

    net = _mlp(0, [5, 8, 3], True, torch.float32, False)
    alt = Alternating(net, torch.optim.SGD(net.parameters(), lr=0.1), inner_steps=3)
    twin = copy.deepcopy(alt)
    twin.__init__(twin.model, twin.optimizer, "cross_entropy", 3)
    x, y = torch.randn(9, 5), torch.randint(0, 3, (9,))

    def reg(model):
        return lambda o, t: F.cross_entropy(o, t) + 1e-2 * model[0].weight.square().sum()

    got = fastpath.alternation_step(alt, x, y, None, None, reg(alt.model))
    fastpath.ENABLED = False
    want = twin.step(x, y, loss_fn=reg(twin.model))
    assert torch.equal(got, want)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), twin.model.parameters()))


def test_alternation_fast_path_refuses_what_it_does_not_cover():
    from beyondsgd.methods.pht.alternating import Alternating

    net = _mlp(0, [5, 8, 3], True, torch.float32, False)
    alt = Alternating(net, torch.optim.SGD(net.parameters(), lr=0.1), inner_steps=2)
    x, y = torch.randn(4, 5), torch.randint(0, 3, (4,))
    assert fastpath.alternation_step(alt, x, y, None, None, None) is not None
    assert fastpath.alternation_step(alt, x, y, None, nn.Sequential(net), None) is None  # DDP
    assert fastpath.alternation_step(alt, x.requires_grad_(), y, None, None, None) is None
    x = x.detach()
    assert fastpath.alternation_step(alt, x.half(), y, None, None, None) is None
    assert fastpath.alternation_step(alt, x, y, torch.arange(4), None, None) is None  # no cache
    with torch.no_grad():
        assert fastpath.alternation_step(alt, x, y, None, None, None) is None
    handle = net[1].register_forward_hook(lambda *a: None)
    assert fastpath.alternation_step(alt, x, y, None, None, None) is None
    handle.remove()
    handle = net[0].weight.register_post_accumulate_grad_hook(lambda p: None)
    assert fastpath.alternation_step(alt, x, y, None, None, None) is None
    handle.remove()
    part = Alternating(net, torch.optim.SGD(net[2].parameters(), lr=0.1))  # grads accumulate
    assert fastpath.alternation_step(part, x, y, None, None, None) is None
    odd = nn.Sequential(net[0], net[1], nn.Identity(), net[2])
    assert fastpath.alternation_step(
        Alternating(odd, torch.optim.SGD(odd.parameters(), lr=0.1)), x, y, None, None,
        None) is None


def test_two_threads_give_the_same_bits_too():
    """Kernels split work by the thread count alike on both paths: digits-sized solve and steps
    on two threads."""
    torch.set_num_threads(2)
    for seed in range(3):
        want, want_p = _solve(seed, False)
        got, got_p = _solve(seed, True)
        assert got == want and all(torch.equal(a, b) for a, b in zip(got_p, want_p))
    import copy

    from beyondsgd.methods.pht.alternating import Alternating

    net = _mlp(0, [64, 128, 128, 10], True, torch.float32, False)
    alt = Alternating(net, torch.optim.Adam(net.parameters(), lr=1e-3, foreach=True),
                      inner_steps=5)
    twin = copy.deepcopy(alt)
    twin.__init__(twin.model, twin.optimizer, "cross_entropy", 5)
    x, y = torch.randn(512, 64), torch.randint(0, 10, (512,))
    got = _run_steps(alt, x, y, "builtin", False, True)
    want = _run_steps(twin, x, y, "builtin", False, False)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), twin.model.parameters()))


def test_a_problems_batch_loss_is_the_builtin_function_with_loss_fns_numbers():
    """The runner trains with ``problem.batch_loss``: ``F.cross_entropy`` / ``F.mse_loss``
    themselves for built-in losses (so PHT's steps recognise them without recording a graph),
    and the same numbers as ``problem.loss_fn``."""
    from beyondsgd.bench.problems import get_problem

    for name, fn in (("digits_mlp", F.cross_entropy), ("diabetes_mlp", F.mse_loss)):
        prob = get_problem(name)
        assert prob.batch_loss is fn
        g = torch.Generator().manual_seed(0)
        out = torch.randn(7, 10 if fn is F.cross_entropy else 1, generator=g)
        y = (torch.randint(0, 10, (7,), generator=g) if fn is F.cross_entropy
             else torch.randn(7, 1, generator=g))
        assert torch.equal(prob.batch_loss(out, y), prob.loss_fn(out, y))


def test_a_torch_without_the_internals_it_checks_keeps_the_autograd_code(monkeypatch):
    """``_quiet`` reads torch internals; where one is missing (another torch version) the fast
    paths are off rather than failing."""
    assert fastpath._quiet()
    monkeypatch.delattr(torch._C, "_len_torch_function_stack")
    assert not fastpath._quiet()
