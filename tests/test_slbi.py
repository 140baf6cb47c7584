"""DessiLBI (SLBI): the update rule against a hand computation of the paper's equations, the
SGD limit, the inverse-scale-space path on a problem with a known sparse solution, the
torch.optim contract (state_dict, schedulers, param groups, copies, pickles), the defaults (the
official recipe: it selects within the first epoch), bad input, and the runner hook."""

import copy
import io
import math
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from beyondsgd.methods.slbi import (
    OFFICIAL,
    SLBI,
    SLBIMethod,
    auto_structure,
    entry_lambda,
    prox_group_lasso,
    slbi_param_groups,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --------------------------------------------------------------------------------------------
# An independent reference: the paper's equations with explicit loops over groups, in float64
# --------------------------------------------------------------------------------------------
def ref_prox(v, lam, structure, scaling="none"):
    out = torch.zeros_like(v)
    if structure == "element":
        for idx in range(v.numel()):
            x = v.flatten()[idx].item()
            out.view(-1)[idx] = math.copysign(max(abs(x) - lam, 0.0), x)
        return out
    for r in range(v.shape[0]):
        row = v[r]
        n = math.sqrt(sum(x * x for x in row.flatten().tolist()))
        thr = lam * (math.sqrt(row.numel()) if scaling == "sqrt_size" else 1.0)
        out[r] = row * (max(0.0, 1.0 - thr / n) if n > 0 else 0.0)
    return out


def ref_step(st, w, g, hp, structure):
    """One step for one tensor. st: dict with buf, V, G (None before the first step)."""
    lr, kappa, nu, mom = hp["lr"], hp["kappa"], hp["nu"], hp["momentum"]
    wd, nest, coupling = hp["weight_decay"], hp["nesterov"], hp["coupling"]
    damp = hp.get("dampening", 0.0)
    # weight decay on weights only (the official code), on everything with decay_1d
    d = g + wd * w if (w.dim() > 1 or hp.get("decay_1d")) else g.clone()
    coupled = structure is not None
    gam = st.get("G", torch.zeros_like(w)) if coupled else None
    v = st.get("V", torch.zeros_like(w)) if coupled else None
    if coupled and coupling == "paper":
        d = d + (w - gam) / nu                      # grad_W Lbar = grad L + (W - Gamma)/nu
    if mom == 0:
        buf, step_dir = None, d
    else:
        buf = d.clone() if st.get("buf") is None else mom * st["buf"] + (1 - damp) * d
        step_dir = d + mom * buf if nest else buf
    if coupled and coupling == "code":
        step_dir = step_dir + (w - gam) / nu
    w_new = w - lr * kappa * step_dir               # W_{k+1} = W_k - kappa alpha (...)
    new = {"buf": buf}
    if coupled:
        v_new = v + lr / nu * (w - gam)             # V_{k+1} = V_k + alpha/nu (W_k - Gamma_k)
        new["V"] = v_new
        new["G"] = kappa * ref_prox(v_new, hp["lambda"], structure, hp.get("scaling", "none"))
    return w_new, new


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 2)
        self.fc = nn.Linear(12, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.fc(torch.tanh(self.conv(x)).flatten(1))))


@pytest.mark.parametrize("coupling,nesterov,wd,kappa,scaling,out_struct", [
    ("paper", False, 0.0, 1.0, "none", None),
    ("paper", True, 1e-2, 2.0, "sqrt_size", "element"),
    ("code", False, 1e-2, 1.5, "none", "element"),
    ("code", True, 0.0, 1.0, "sqrt_size", "neuron"),
])
def test_steps_match_hand_computation(coupling, nesterov, wd, kappa, scaling, out_struct):
    torch.manual_seed(0)
    model = Tiny().double()
    hp = dict(lr=0.5, kappa=kappa, nu=0.5, momentum=0.9, weight_decay=wd, nesterov=nesterov,
              coupling=coupling, scaling=scaling)
    lam = {"filter": 0.05, "neuron": 0.04, "element": 0.01}
    groups = [
        {"params": [model.conv.weight], "structure": "filter", "lambda": lam["filter"]},
        {"params": [model.fc.weight], "structure": "neuron", "lambda": lam["neuron"]},
        {"params": [model.out.weight], "structure": out_struct,
         "lambda": lam.get(out_struct, 1.0)},
        {"params": [model.conv.bias, model.fc.bias, model.out.bias]},
    ]
    opt = SLBI(groups, lr=hp["lr"], kappa=kappa, nu=hp["nu"], momentum=0.9, nesterov=nesterov,
               weight_decay=wd, coupling=coupling, lambda_scaling=scaling)
    structs = {model.conv.weight: "filter", model.fc.weight: "neuron",
               model.out.weight: out_struct}
    ref_w = {p: p.detach().clone() for p in model.parameters()}
    ref_st = {p: {} for p in model.parameters()}
    x = torch.randn(5, 2, 3, 3, dtype=torch.double)
    y = torch.randint(0, 2, (5,))
    saw_support = set()
    for _ in range(6):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        grads = {p: p.grad.detach().clone() for p in model.parameters()}
        for p in model.parameters():
            # the reference follows its own trajectory but uses the gradient at the shared W
            assert torch.allclose(ref_w[p], p.detach(), atol=1e-10, rtol=0)
            s = structs.get(p)
            st_hp = dict(hp, **{"lambda": lam.get(s, 1.0)})
            ref_w[p], ref_st[p] = ref_step(ref_st[p], ref_w[p], grads[p], st_hp, s)
        opt.step()
        for p in model.parameters():
            torch.testing.assert_close(p.detach(), ref_w[p], atol=1e-10, rtol=0)
            s = structs.get(p)
            if s is not None:
                torch.testing.assert_close(opt.state[p]["V"], ref_st[p]["V"], atol=1e-10, rtol=0)
                torch.testing.assert_close(opt.gamma(p), ref_st[p]["G"], atol=1e-10, rtol=0)
                if bool((opt.gamma(p) != 0).any()):
                    saw_support.add(s)
            else:
                assert "V" not in opt.state[p]
    # the test exercised the thresholding (some groups selected, not all trivially)
    assert {"filter", "neuron"} <= saw_support


def test_prox_matches_reference_and_group_structure():
    torch.manual_seed(1)
    v = torch.randn(4, 3, 2, 2, dtype=torch.double)
    for s in ("filter", "element"):
        for lam in (0.0, 0.5, 3.0):
            torch.testing.assert_close(prox_group_lasso(v, lam, s), ref_prox(v, lam, s))
    torch.testing.assert_close(prox_group_lasso(v, 0.3, "filter", "sqrt_size"),
                               ref_prox(v, 0.3, "filter", "sqrt_size"))
    # whole rows are zero or all non-zero: structural sparsity
    g = prox_group_lasso(v, 3.5, "filter").reshape(4, -1)
    assert 0 < int((g != 0).any(1).sum()) < 4
    assert all(bool((r != 0).all()) or bool((r == 0).all()) for r in g)
    # the prox is the minimiser of 1/2||G - V||^2 + lam * sum_g ||G_g||: check by perturbation
    lam = 1.0
    gstar = prox_group_lasso(v, lam, "filter")

    def obj(gm):
        return 0.5 * ((gm - v) ** 2).sum() + lam * gm.reshape(4, -1).norm(dim=1).sum()
    base = obj(gstar)
    for _ in range(20):
        assert obj(gstar + 1e-3 * torch.randn_like(v)) >= base - 1e-12


@pytest.mark.parametrize("nesterov,wd", [(False, 0.0), (True, 1e-3)])
def test_infinite_nu_follows_sgd_momentum(nesterov, wd):
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    b = copy.deepcopy(a)
    c = copy.deepcopy(a)
    sgd = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, nesterov=nesterov,
                          weight_decay=wd)
    slbi = SLBI(slbi_param_groups(b), lr=0.05, kappa=2.0, nu=math.inf, momentum=0.9,
                nesterov=nesterov, weight_decay=wd, weight_decay_1d=True)  # kappa * lr = 0.1
    big_nu = SLBI(slbi_param_groups(c), lr=0.1, nu=1e9, momentum=0.9, nesterov=nesterov,
                  weight_decay=wd, weight_decay_1d=True)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    for _ in range(25):
        for m, o in ((a, sgd), (b, slbi), (c, big_nu)):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        torch.testing.assert_close(pb, pa, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(pc, pa, atol=1e-5, rtol=1e-4)
    # with the coupling off Gamma never moves
    assert all(int((slbi.gamma(p) != 0).sum()) == 0 for p in (b[0].weight,))


def test_true_features_enter_first_lasso_path():
    """Sparse linear regression (5 true features of 40): along the LBI path the true features
    enter supp(Gamma) first, in order of signal strength, and the support only grows."""
    g = torch.Generator().manual_seed(0)
    n, p = 400, 40
    X = torch.randn(n, p, generator=g, dtype=torch.double)
    beta = torch.zeros(p, dtype=torch.double)
    true = [3, 17, 25, 31, 8]
    beta[true] = torch.tensor([4.0, -3.0, 2.5, -2.0, 1.5], dtype=torch.double)
    y = X @ beta + 0.1 * torch.randn(n, generator=g, dtype=torch.double)
    model = nn.Linear(p, 1, bias=False).double()
    nn.init.zeros_(model.weight)
    opt = SLBI([{"params": [model.weight], "structure": "element"}], lr=0.05, kappa=4.0,
               nu=1.0, lam=1.0, momentum=0.0)
    entry = torch.full((p,), -1)
    sizes = []
    for k in range(3000):
        opt.zero_grad()
        (0.5 * ((model(X).squeeze(1) - y) ** 2).mean()).backward()
        opt.step()
        sel = (opt.gamma(model.weight)[0] != 0)
        entry[(entry < 0) & sel] = k
        sizes.append(int(sel.sum()))
    order = [int(i) for i in torch.argsort(torch.where(entry < 0, 10**9, entry))]
    assert sizes[0] == 0
    assert sorted(order[:5]) == sorted(true)
    assert order[0] == 3                                  # strongest signal first
    assert all(b >= a for a, b in zip(sizes, sizes[1:]))  # simple to complex
    assert sizes[-1] >= 5
    # Gamma on the true support approaches the least-squares fit (LBI's bias reduction)
    ls = torch.linalg.lstsq(X[:, true], y).solution
    torch.testing.assert_close(opt.gamma(model.weight)[0, true], ls, atol=0.15, rtol=0.05)


def test_strong_neurons_enter_first_group_path():
    """Multi-output regression where only outputs 1 and 4 depend on the input: the rows
    (neurons) of those outputs enter supp(Gamma) before any other row."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(300, 10, generator=g)
    B = torch.zeros(6, 10)
    B[1] = torch.randn(10, generator=g)
    B[4] = 0.6 * torch.randn(10, generator=g)
    Y = X @ B.T + 0.1 * torch.randn(300, 6, generator=g)
    model = nn.Linear(10, 6, bias=False)
    nn.init.zeros_(model.weight)
    opt = SLBI([{"params": [model.weight], "structure": "neuron"}], lr=0.1, nu=1.0, lam=2.0,
               momentum=0.9)
    first = []
    for _ in range(400):
        opt.zero_grad()
        (0.5 * ((model(X) - Y) ** 2).sum(1).mean()).backward()
        opt.step()
        rows = (opt.gamma(model.weight) != 0).any(1)
        first += [int(r) for r in rows.nonzero().flatten() if int(r) not in first]
    assert first[:2] == [1, 4]


def test_state_dict_round_trip_exact():
    torch.manual_seed(0)
    m1 = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5),
                       nn.ReLU(), nn.Linear(5, 2))
    opt1 = SLBI(slbi_param_groups(m1), lr=0.3, nu=0.5, lam=0.02, momentum=0.9)
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 2, (8,))

    def run(m, o, k):
        for _ in range(k):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    run(m1, opt1, 4)
    m2 = copy.deepcopy(m1)
    opt2 = SLBI(slbi_param_groups(m2), lr=0.3, nu=0.5, lam=0.02, momentum=0.9)
    sd = copy.deepcopy(opt1.state_dict())
    assert {"V", "Gamma", "momentum_buffer"} <= set(sd["state"][0])
    opt2.load_state_dict(sd)
    assert [g["structure"] for g in opt2.param_groups] == ["filter", "element", "element", None]
    run(m1, opt1, 5)
    run(m2, opt2, 5)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
        assert torch.equal(opt1.state[p1]["momentum_buffer"], opt2.state[p2]["momentum_buffer"])
    assert torch.equal(opt1.gamma(m1[0].weight), opt2.gamma(m2[0].weight))
    assert int((opt1.gamma(m1[0].weight) != 0).sum()) > 0
    assert opt1.state_dict()["state"].keys() == opt2.state_dict()["state"].keys()


def test_lr_scheduler_drives_the_step():
    w = nn.Parameter(torch.ones(3, 2))
    opt = SLBI([{"params": [w], "structure": "neuron"}], lr=1.0, nu=math.inf, momentum=0.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    for lr in (1.0, 0.1):
        before = w.detach().clone()
        w.grad = torch.ones_like(w)
        opt.step()
        torch.testing.assert_close(before - w.detach(), torch.full_like(w, lr))
        sched.step()


def test_param_groups_from_model():
    """Defaults: the official coupling (conv filters; every Linear weight element-wise, the
    classifier included); neurons for hidden Linear layers are an option."""
    from beyondsgd.models import cnn_2c2d, lenet5
    m = lenet5(seed=0)
    groups = slbi_param_groups(m)
    by = {g["name"]: g for g in groups}
    assert [p.shape for p in by["conv"]["params"]] == [m[0].weight.shape, m[3].weight.shape]
    assert (by["conv"]["structure"], by["linear"]["structure"], by["output"]["structure"]) == \
        ("filter", "element", "element")
    assert [p.shape for p in by["linear"]["params"]] == [m[7].weight.shape, m[9].weight.shape]
    assert by["output"]["params"] == [m[11].weight]          # the classifier is coupled
    uncoupled = by["uncoupled"]["params"]
    assert by["uncoupled"]["structure"] is None
    assert len(uncoupled) == 5 and all(p.dim() == 1 for p in uncoupled)   # the five biases
    # every parameter appears exactly once, in some group
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in m.parameters())
    neuron = {g["name"]: g["structure"] for g in slbi_param_groups(m, linear="neuron",
                                                                     output=None)}
    assert neuron == {"conv": "filter", "linear": "neuron", "uncoupled": None}
    g2 = slbi_param_groups(cnn_2c2d(seed=0), conv="element", linear=None, output="element",
                           lam=0.5, conv_lambda=0.1)
    assert {g["name"]: (g["structure"], g.get("lambda")) for g in g2} == {
        "conv": ("element", 0.1), "output": ("element", 0.5), "uncoupled": (None, None)}


def test_bad_input_raises_clear_errors():
    lin, conv = nn.Linear(3, 2), nn.Conv2d(1, 2, 3)
    with pytest.raises(ValueError, match="'filter' needs a conv weight"):
        SLBI([{"params": [lin.weight], "structure": "filter"}])
    with pytest.raises(ValueError, match="'neuron' needs a Linear weight"):
        SLBI([{"params": [conv.weight], "structure": "neuron"}])
    with pytest.raises(ValueError, match="'channel' is not one of"):
        SLBI([{"params": [lin.weight], "structure": "channel"}])
    with pytest.raises(ValueError, match="'neuron' needs"):
        SLBI([{"params": [lin.bias], "structure": "neuron"}])
    with pytest.raises(ValueError, match="conv='neuron' is not accepted"):
        slbi_param_groups(nn.Sequential(conv), conv="neuron")
    with pytest.raises(ValueError, match="linear='filter' is not accepted"):
        slbi_param_groups(nn.Sequential(lin), linear="filter")
    for kw, msg in [({"lr": -1.0}, "lr must be"), ({"kappa": 0.0}, "kappa must be"),
                    ({"nu": 0.0}, "nu must be"), ({"nu": float("nan")}, "nu must be"),
                    ({"lam": -0.1}, "lam must be"), ({"momentum": -0.5}, "momentum must be"),
                    ({"momentum": 1.0}, "momentum must be a number >= 0 and < 1, got 1.0"),
                    ({"dampening": 2.0}, "dampening must be a number >= 0 and <= 1"),
                    ({"momentum": 0.0, "nesterov": True}, "Nesterov"),
                    ({"coupling": "inside"}, "coupling must be"),
                    ({"lambda_scaling": "size"}, "lambda_scaling must be"),
                    ({"weight_decay": float("inf")}, "weight_decay must be")]:
        with pytest.raises(ValueError, match=msg):
            SLBI(lin.parameters(), **kw)
    with pytest.raises(ValueError, match="lambda must be"):
        SLBI([{"params": [lin.weight], "structure": "neuron", "lambda": -1.0}])
    with pytest.raises(ValueError, match="lr must be a number or a one-element tensor"):
        SLBI([{"params": [lin.weight], "structure": "neuron"}], lr=torch.ones(2))
    with pytest.warns(UserWarning, match="slbi_param_groups"):
        flat = SLBI(lin.parameters(), structure=None)
    with pytest.raises(ValueError, match="no Γ"):
        flat.gamma(lin.weight)
    with pytest.raises(ValueError, match=r"structure 'autos' is not one of .*'auto'"):
        SLBI(lin.parameters(), structure="autos")
    with pytest.raises(ValueError, match="not managed"):
        SLBI([lin.weight], structure="element").structure(lin.bias)


@pytest.mark.parametrize("device", DEVICES)
def test_runs_on_device_and_is_deterministic(device):
    def train():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 2)).to(device)
        o = SLBI(slbi_param_groups(m), lr=0.2, nu=1.0, lam=0.05)
        x = torch.randn(64, 5, device=device)
        y = (x[:, 0] > 0).long()
        losses = []
        for _ in range(60):
            o.zero_grad()
            loss = nn.functional.cross_entropy(m(x), y)
            loss.backward()
            o.step()
            losses.append(float(loss.detach()))
        return m, o, losses
    m1, o1, l1 = train()
    m2, o2, l2 = train()
    assert l1 == l2
    assert l1[-1] < 0.5 * l1[0]
    assert o1.gamma(m1[0].weight).device.type == device
    assert 0 < o1.support_sizes(m1)["total"] <= 16 * 5 + 2 * 16     # weights


def test_runner_records_support_and_path():
    from beyondsgd.bench.run.runner import run_trial
    res = run_trial("digits_mlp", "slbi", {}, seed=0, epochs=3)       # the defaults
    assert res.status == "finished"
    first, last = res.evals[0], res.final
    assert first["support_total"] == 0 and first["support/1"] == 0
    # the official coupling (single weights, which enter later than whole neurons: measured
    # 0, 12, 458 weights after epochs 1-3 of 17 steps) selects within the run
    assert last["support_total"] > 0
    totals = [e["support_total"] for e in res.evals]
    assert all(b >= a for a, b in zip(totals, totals[1:]))
    layers = {k for k in last if k.startswith("support/")}
    assert layers == {"support/1", "support/3", "support/5"}       # the classifier coupled too
    assert last["support_total"] == sum(last[k] for k in layers)
    assert 0 < last["support_frac"] <= 1 and 0 < last["sparse_val_metric"] <= 1
    assert last["val_metric"] > 0.8
    paths = [e for e in res.events if e["kind"] == "slbi_path"]
    assert [e["epoch"] for e in paths] == [1, 2, 3]
    assert paths[0]["lambda"] == pytest.approx(entry_lambda(1.0, 0.1, 20.0, 17))

    def count(v):                      # unit layers list the units, element layers count them
        return len(v) if isinstance(v, list) else int(v)
    entered = sum(count(v) for e in paths for v in e["entered"].values())
    left = sum(count(v) for e in paths for v in e["left"].values())
    assert entered - left == last["support_total"]
    neuron = run_trial("digits_mlp", "slbi", {"linear": "neuron", "output": "none"}, seed=0,
                       epochs=1)                    # neurons enter sooner: within epoch 1
    assert {k for k in neuron.final if k.startswith("support/")} == {"support/1", "support/3"}
    assert neuron.final["support_total"] > 0


# --------------------------------------------------------------------------------------------
# The fast in-place step against the straightforward equations, on independent trajectories
# --------------------------------------------------------------------------------------------
LONG_CONFIGS = {   # lam_scale: thresholds chosen so that the path is partway at some step
    "code": dict(coupling="code"),
    "code-wd": dict(coupling="code", weight_decay=1e-2),
    "code-nesterov": dict(coupling="code", nesterov=True, weight_decay=1e-3, kappa=1.5,
                          lambda_scaling="sqrt_size", lam_scale=1.0),
    "paper-damp": dict(coupling="paper", dampening=0.1, weight_decay=1e-2, decay_1d=True,
                       kappa=2.0, lam_scale=0.13),
    "code-no-momentum": dict(coupling="code", momentum=0.0, weight_decay=1e-2, lam_scale=2.0),
    "paper-no-momentum": dict(coupling="paper", momentum=0.0, lam_scale=2.0),
    "code-channels-last": dict(coupling="code", channels_last=True, out_struct="element"),
}


@pytest.mark.parametrize("name", list(LONG_CONFIGS))
def test_fast_step_matches_the_equations_over_many_steps(name):
    """400 steps in float64: the optimizer (in place, fused, prox written into Gamma) and a
    transcription of the update equations (ref_step) each follow their own trajectory from the
    same start, each with gradients at its own weights. Measured largest difference over all
    configurations after 400 steps: 3.6e-15 (W) and 4.9e-15 (V); the tolerance 1e-12 is 200x
    that round-off floor (a relative change of 1e-6 in the V step fails it)."""
    cfg = {**dict(lr=0.1, kappa=1.0, nu=2.0, momentum=0.9, weight_decay=0.0, nesterov=False,
                  dampening=0.0, lambda_scaling="none", decay_1d=False, out_struct=None,
                  channels_last=False, lam_scale=4.0), **LONG_CONFIGS[name]}
    torch.manual_seed(0)
    a = Tiny().double()
    if cfg["channels_last"]:
        a = a.to(memory_format=torch.channels_last)
        assert not a.conv.weight.is_contiguous()
    b = copy.deepcopy(a)
    lam = {k: cfg["lam_scale"] * v for k, v in
           {"filter": 0.3, "neuron": 0.5, "element": 0.02}.items()}

    def groups(m):
        return [{"params": [m.conv.weight], "structure": "filter", "lambda": lam["filter"]},
                {"params": [m.fc.weight], "structure": "neuron", "lambda": lam["neuron"]},
                {"params": [m.out.weight], "structure": cfg["out_struct"],
                 "lambda": lam.get(cfg["out_struct"], 1.0)},
                {"params": [m.conv.bias, m.fc.bias, m.out.bias]}]
    opt = SLBI(groups(a), lr=cfg["lr"], kappa=cfg["kappa"], nu=cfg["nu"],
               momentum=cfg["momentum"], dampening=cfg["dampening"], nesterov=cfg["nesterov"],
               weight_decay=cfg["weight_decay"], weight_decay_1d=cfg["decay_1d"],
               coupling=cfg["coupling"], lambda_scaling=cfg["lambda_scaling"])
    hp = dict(cfg, scaling=cfg["lambda_scaling"])
    structs = {id(g["params"][0]): g.get("structure") for g in groups(b)[:3]}
    ref_st = {p: {} for p in b.parameters()}
    x = torch.randn(16, 2, 3, 3, dtype=torch.double)
    y = torch.randint(0, 2, (16,))
    supports = []
    for _ in range(400):
        for m in (a, b):
            m.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
        with torch.no_grad():
            for p in b.parameters():
                s = structs.get(id(p))
                new_w, ref_st[p] = ref_step(ref_st[p], p.detach().clone(), p.grad,
                                            dict(hp, **{"lambda": lam.get(s, 1.0)}), s)
                p.copy_(new_w)
        supports.append(sum(int((opt.gamma(w) != 0).flatten(1).any(1).sum())
                            for w in (a.conv.weight, a.fc.weight)))
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-12, rtol=0, msg=n)
        if "V" in opt.state[pa]:
            torch.testing.assert_close(opt.state[pa]["V"], ref_st[pb]["V"], atol=1e-12, rtol=0)
            assert torch.equal(opt.gamma(pa) != 0, ref_st[pb]["G"] != 0)
            torch.testing.assert_close(opt.gamma(pa), ref_st[pb]["G"], atol=1e-12, rtol=0)
    assert supports[0] == 0 and any(0 < k < 7 for k in supports)  # thresholding exercised


def test_in_place_prox_matches_reference_layouts():
    torch.manual_seed(2)
    v = torch.randn(5, 3, 2, 2, dtype=torch.double)
    cl = v.to(memory_format=torch.channels_last)
    from beyondsgd.methods.slbi import prox_group_lasso_
    for s, lam in (("filter", 1.5), ("element", 0.7)):
        ref = ref_prox(v, lam, s)
        for src in (v, cl):
            out = torch.full_like(src, 9.0)                 # overwritten, not accumulated
            got = prox_group_lasso_(out, src, lam, s, scale=2.0)
            assert got is out
            torch.testing.assert_close(out, 2.0 * ref, atol=1e-15, rtol=0)
    assert torch.equal(prox_group_lasso(v, 0.0, "element"), v)


# --------------------------------------------------------------------------------------------
# Copies and pickles keep everything and step identically
# --------------------------------------------------------------------------------------------
def _copy(obj, how):
    if how == "deepcopy":
        return copy.deepcopy(obj)
    if how == "pickle":
        return pickle.loads(pickle.dumps(obj))
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_copies_keep_structure_and_step_identically(how):
    from beyondsgd.methods.slbi import sparsity as S
    torch.manual_seed(0)
    m1 = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5),
                       nn.ReLU(), nn.Linear(5, 2))
    o1 = SLBI(slbi_param_groups(m1), lr=0.3, nu=0.5, lam=0.02)
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 2, (8,))

    def run(m, o, k):
        for _ in range(k):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    run(m1, o1, 4)
    m2, o2 = _copy((m1, o1), how)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert p2 is not p1 and o2.structure(p2) == o1.structure(p1)
        if o1.structure(p1) is not None:
            assert torch.equal(o2.gamma(p2), o1.gamma(p1))
    assert o2.support_sizes(m2) == o1.support_sizes(m1) and o1.support_sizes(m1)["total"] > 0
    xs = torch.randn(3, 1, 6, 6)
    assert torch.equal(S.sparse_model(m2, o2)(xs), S.sparse_model(m1, o1)(xs))
    o3 = _copy(o1, how)                                  # the optimizer alone: its own params
    p3 = o3.param_groups[0]["params"][0]
    assert o3.structure(p3) == "filter" and torch.equal(o3.gamma(p3), o1.gamma(m1[0].weight))
    run(m1, o1, 6)
    run(m2, o2, 6)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
        for k in o1.state[p1]:
            assert torch.equal(o1.state[p1][k], o2.state[p2][k])


# --------------------------------------------------------------------------------------------
# Defaults: the official recipe; a flat parameter list warns
# --------------------------------------------------------------------------------------------
def test_defaults_are_the_official_recipe():
    from beyondsgd.models import lenet5
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # slbi_param_groups: no warning
        opt = SLBI(slbi_param_groups(lenet5(seed=0)))
    d = opt.defaults
    assert (d["lr"], d["kappa"], d["nu"], d["lambda"], d["momentum"], d["coupling"]) == \
        (0.1, 1.0, 20.0, 1.0, 0.9, "code")
    assert (d["weight_decay"], d["weight_decay_1d"], d["structure"]) == (0.0, False, "auto")
    assert (d["maximize"], d["foreach"]) == (False, None)
    hp = SLBIMethod().hp
    assert {k: hp[k] for k in ("lr", "kappa", "nu", "lambda", "momentum", "coupling",
                               "weight_decay_1d", "lambda_unit", "conv", "linear",
                               "output")} == \
        {"lr": 0.1, "kappa": 1.0, "nu": 20.0, "lambda": 1.0, "momentum": 0.9,
         "coupling": "code", "weight_decay_1d": False, "lambda_unit": "entry",
         "conv": "filter", "linear": "element", "output": "element"}
    assert {h.name for h in SLBIMethod.hparams if h.tune} == {"lr", "nu"}


# --------------------------------------------------------------------------------------------
# The defaults against an independent re-implementation of the official optimizer
# --------------------------------------------------------------------------------------------
def official_shrink(v):
    """The official 2-D prox: element-wise soft-threshold at the hard-wired lambda = 1."""
    return torch.sign(v) * torch.clamp(v.abs() - 1.0, min=0.0)


def official_group_shrink(v):
    """The official 4-D prox: every output filter times max(0, 1 - 1/||filter||)."""
    norms = (v * v).sum(dim=(1, 2, 3)).sqrt()
    factor = torch.where(norms > 0, 1.0 - 1.0 / norms, torch.zeros_like(norms)).clamp(min=0.0)
    return v * factor[:, None, None, None]


def official_reference_step(w, g, st, hp):
    """One step of the official optimizer (DessiLBI2020/DessiLBI ``code/slbi_opt.py``) for one
    tensor, written from its description (``shared/papers/dessilbi.md``, Sec. 2), in float64.
    Every 2-D and 4-D tensor is coupled (the LeNet demo's layer list), nothing else."""
    lr, kappa, nu = hp["lr"], hp["kappa"], hp["nu"]
    mom, wd = hp["momentum"], hp["weight_decay"]
    d = g.clone() if "buf" not in st else mom * st["buf"] + g     # buffer; first step: grad
    if wd != 0 and w.dim() != 1:                                   # weights only, into buf
        d = d + wd * w
    st["buf"] = d
    if w.dim() not in (2, 4):
        return w - lr * kappa * d                                  # biases: SGD step, x kappa
    gam = st.get("G", torch.zeros_like(w))
    v = st.get("V", torch.zeros_like(w))
    w_new = w - lr * kappa * d - lr * kappa / nu * (w - gam)       # coupling outside momentum
    st["V"] = v + lr / nu * (w - gam)
    st["G"] = kappa * (official_shrink(st["V"]) if w.dim() == 2
                       else official_group_shrink(st["V"]))
    return w_new


DEFAULT_BUILDERS = {
    "SLBI(model.parameters())": lambda m, kw: SLBI(m.parameters(), **kw),
    "SLBI(slbi_param_groups(model))": lambda m, kw: SLBI(slbi_param_groups(m), **kw),
    "method slbi": lambda m, kw: SLBIMethod(kw).make_optimizer(m),
}


@pytest.mark.parametrize("weight_decay,steps,builders", [
    (0.0, 400, list(DEFAULT_BUILDERS)), (5e-4, 150, ["SLBI(model.parameters())"])])
def test_defaults_equal_the_official_optimizer_on_the_official_lenet(weight_decay, steps,
                                                                     builders):
    """The official LeNet (conv3 a convolution), official recipe (lr 0.1, kappa 1, nu 20,
    lambda 1, momentum 0.9), Fashion-MNIST minibatches of 16, float64: at every step of every
    default way to build SLBI (a flat parameter list, slbi_param_groups, the benchmark method),
    the new W, V and Gamma equal what an independent re-implementation of the official
    optimizer computes from the same state and gradient, to round-off, supports included; with
    weight decay too (weights decayed, biases not). Measured largest |W difference| over all
    steps: 2.2e-16 (one ulp at |W| ~ 1); tolerance 1e-13. (Whole independent trajectories
    are not compared here: on this ReLU/max-pool net at batch 16 a 1e-15 difference grows to
    1e-7 within 200 steps, the supports still identical; ``benchmarks/slbi_official_parity.py``
    measures them.) The defaults before issue 22 (Linear weights by neuron; slbi_param_groups:
    the classifier dense) fail at the first step (the classifier) or once a row enters."""
    from beyondsgd.bench.problems import get_problem
    from beyondsgd.bench.run.runner import DATA_SPLIT_SEED
    from beyondsgd.models import lenet5_official
    torch.set_num_threads(1)
    bs = 16
    data = get_problem("fmnist_lenet5_official_cpu").load(DATA_SPLIT_SEED)
    x, y = data.x_train[:bs * steps].double(), data.y_train[:bs * steps]
    kw = {"weight_decay": weight_decay} if weight_decay else {}
    models = {name: lenet5_official(seed=0).double() for name in builders}
    opts = {name: DEFAULT_BUILDERS[name](models[name], kw) for name in builders}
    hp = dict(lr=0.1, kappa=1.0, nu=20.0, momentum=0.9, weight_decay=weight_decay)
    worst = 0.0
    for k in range(steps):
        xb, yb = x[bs * k:bs * (k + 1)], y[bs * k:bs * (k + 1)]
        for name, m in models.items():
            opt = opts[name]
            opt.zero_grad()
            F.cross_entropy(m(xb), yb).backward()
            expect = {}
            for p in m.parameters():                   # the official step from our state
                st = opt.state[p]
                ref_st = {"buf": st["momentum_buffer"].clone()} if st else {}
                if "V" in st:
                    ref_st.update(V=st["V"].clone(), G=st["Gamma"].clone())
                expect[p] = (official_reference_step(p.detach().clone(), p.grad.clone(),
                                                     ref_st, hp), ref_st)
            opt.step()
            for n, p in m.named_parameters():
                w_ref, ref_st = expect[p]
                worst = max(worst, float((p.detach() - w_ref).abs().max()))
                torch.testing.assert_close(p.detach(), w_ref, atol=1e-13, rtol=0,
                                           msg=f"{name}, step {k}: {n}")
                assert (opt.structure(p) is not None) == ("G" in ref_st), (name, n)
                if "G" in ref_st:
                    torch.testing.assert_close(opt.state[p]["V"], ref_st["V"], atol=1e-13,
                                               rtol=0)
                    assert torch.equal(opt.gamma(p) != 0, ref_st["G"] != 0), (name, k, n)
                    torch.testing.assert_close(opt.gamma(p), ref_st["G"], atol=1e-13, rtol=0)
    for name, m in models.items():
        assert len(opts[name].param_groups) == (1 if name.startswith("SLBI(model") else 4)
        sizes = {n: int((opts[name].gamma(p) != 0).sum()) for n, p in m.named_parameters()
                 if p.dim() > 1}
        if not weight_decay:    # both proxes exercised: some (not all) filters, some weights
            assert 0 < sizes["6.weight"] < 120 * 400 and sizes["9.weight"] > 0 and \
                sizes["11.weight"] > 0, sizes
    print(f"largest |W difference| over {steps} steps: {worst:.2g}")


def test_neuron_coupling_is_a_named_option():
    """structure='auto_neuron' and slbi_param_groups(linear='neuron', output='neuron') group
    Linear weights by row: they train exactly as hand-written groups."""
    kw = dict(lr=0.1, nu=2.0, lam=0.05, momentum=0.9)

    def explicit(b):
        return [{"params": [b[0].weight], "structure": "filter"},
                {"params": [b[3].weight, b[5].weight], "structure": "neuron"},
                {"params": [b[0].bias, b[3].bias, b[5].bias], "structure": None}]
    b = _conv_net()
    wb = _train(b, SLBI(explicit(b), **kw))
    for make in (lambda m: SLBI(m.parameters(), structure="auto_neuron", **kw),
                 lambda m: SLBI(slbi_param_groups(m, linear="neuron", output="neuron"), **kw)):
        a = _conv_net()
        opt = make(a)
        assert [opt.structure(p) for p in a.parameters()] == \
            ["filter", None, "neuron", None, "neuron", None]
        assert torch.allclose(_train(a, opt), wb, rtol=0, atol=1e-14)
        sizes = opt.support_sizes(a)
        assert sizes["3.weight"] <= 5 and sizes["total"] > 0   # rows counted, not weights


def test_flat_parameter_list_without_gamma_warns_and_names_the_fix():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.warns(UserWarning, match=r"slbi_param_groups\(model\)"):
        opt = SLBI(model.parameters(), structure=None)
    assert all(opt.structure(p) is None for p in model.parameters())
    # 'auto' on 1-D parameters only (DeepOBS's quadratic_deep: one vector theta): no Gamma
    theta = nn.Parameter(torch.ones(100))
    with pytest.warns(UserWarning, match=r"SGD with momentum; parameter shapes \[\(100,\)\]"):
        SLBI([theta])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SLBI(model.parameters())  # the default 'auto' couples the two Linear weights
        SLBI(model.parameters(), structure="element")
        SLBI(slbi_param_groups(model))


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5),
                         nn.Tanh(), nn.Linear(5, 2)).double()


def test_auto_structure_by_shape():
    model = _conv_net()
    opt = SLBI(model.parameters())  # structure="auto" is the default
    got = {n: opt.structure(p) for n, p in model.named_parameters()}
    assert got == {"0.weight": "filter", "0.bias": None, "3.weight": "element", "3.bias": None,
                   "5.weight": "element", "5.bias": None}
    # the user's group stays one group, 'auto' and its other settings kept
    opt = SLBI([{"params": list(model.parameters()), "lr": 0.03, "structure": "auto_neuron"}],
               structure=None)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["structure"] == "auto_neuron"
    assert [opt.structure(p) for p in model.parameters()] == \
        ["filter", None, "neuron", None, "neuron", None]
    assert [auto_structure(torch.zeros(s)) for s in [(2, 1, 3), (2, 1, 3, 3, 3), (4,), (),
                                                      (3, 4)]] == \
        ["filter", "filter", None, None, "element"]


def _train(model, opt, steps=30):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (16,), generator=g)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_auto_equals_the_explicit_groups_it_stands_for():
    """SLBI(model.parameters()) trains exactly as hand-written groups (conv weights: filters,
    both Linear weights: element-wise, biases: no Gamma) -- an independent construction --
    and SLBI(model.named_parameters()) exactly as SLBI(model.parameters())."""
    kw = dict(lr=0.1, nu=2.0, lam=0.05, momentum=0.9)
    a = _conv_net()
    opt_a = SLBI(a.parameters(), **kw)
    b = _conv_net()
    opt_b = SLBI([{"params": [b[0].weight], "structure": "filter"},
                  {"params": [b[3].weight, b[5].weight], "structure": "element"},
                  {"params": [b[0].bias, b[3].bias, b[5].bias], "structure": None}], **kw)
    c = _conv_net()
    opt_c = SLBI(c.named_parameters(), **kw)
    assert opt_c.param_groups[0]["param_names"] == [n for n, _ in c.named_parameters()]
    wa, wb, wc = _train(a, opt_a), _train(b, opt_b), _train(c, opt_c)
    assert torch.allclose(wa, wb, rtol=0, atol=1e-14)
    assert torch.equal(wa, wc)
    assert opt_a.support_sizes(a) == opt_b.support_sizes(b) == opt_c.support_sizes(c)
    assert opt_a.support_sizes(a)["total"] > 0  # something was selected in 30 steps


@pytest.mark.parametrize("structure", ["auto", "auto_neuron", "element", None])
def test_named_parameters_are_accepted(structure):
    """torch.optim accepts model.named_parameters(); so does SLBI, under every structure (it
    crashed under 'auto' before issue 27), and the names survive a state_dict round trip."""
    m = _conv_net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                       # structure=None warns
        opt = SLBI(m.named_parameters(), structure=structure, lr=0.1, nu=2.0, lam=0.05)
        opt.add_param_group({"params": [("extra", nn.Parameter(torch.ones(2, 3,
                                                                           dtype=torch.double)))]})
    assert opt.param_groups[1]["param_names"] == ["extra"]
    _train(m, opt, steps=3)
    sd = opt.state_dict()
    assert sd["param_groups"][0]["param_names"] == [n for n, _ in m.named_parameters()]


def test_the_users_groups_stay_the_users_groups():
    """A flat parameter list is one group (issue 27: 'auto' used to split it into three), so
    per-group LR schedulers with one value work, and a checkpoint of an optimizer built without
    'auto' (structure=None: one group) loads into the default one."""
    for make in (lambda m: SLBI(m.parameters()),
                 lambda m: SLBI([{"params": list(m.parameters())}], structure="auto_neuron")):
        m = _conv_net()
        opt = make(m)
        assert len(opt.param_groups) == 1
        sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda k: 0.5 ** k])
        _train(m, opt, steps=1)
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
        m2 = _conv_net()
        opt2 = make(m2)
        one = torch.optim.lr_scheduler.OneCycleLR(opt2, max_lr=[0.1], total_steps=20)
        lrs = []
        for _ in range(3):
            _train(m2, opt2, steps=1)
            one.step()
            lrs.append(opt2.param_groups[0]["lr"])
        assert lrs[0] < lrs[1] < lrs[2] <= 0.1                   # warming up towards max_lr
    # a checkpoint saved by an optimizer without 'auto' (one group) loads into the default
    m = _conv_net()
    with pytest.warns(UserWarning):
        old = SLBI(m.parameters(), structure=None, lr=0.1)
    _train(m, old, steps=2)
    new = SLBI(m.parameters())
    new.load_state_dict(copy.deepcopy(old.state_dict()))
    assert new.param_groups[0]["structure"] is None             # the checkpoint's settings
    assert torch.equal(new.state[m[0].weight]["momentum_buffer"],
                       old.state[m[0].weight]["momentum_buffer"])


@pytest.mark.parametrize("bad,msg", [
    ({"lr": float("nan")}, "lr must be a finite number >= 0.0, got nan"),
    ({"lambda": -1.0}, "lambda must be a finite number >= 0.0, got -1.0"),
    ({"momentum": 1.0}, "momentum must be a number >= 0 and < 1, got 1.0"),
    ({"kappa": 0.0}, "kappa must be a finite number > 0.0"),
    ({"nu": -2.0}, "nu must be a number > 0"),
    ({"weight_decay": -1e-3}, "weight_decay must be"),
    ({"momentum": 0.0, "nesterov": True}, "Nesterov momentum requires"),
    ({"coupling": "inside"}, "coupling must be one of"),
    ({"lambda_scaling": "size"}, "lambda_scaling must be one of"),
    ({"structure": "neurons"}, "structure 'neurons' is not one of"),
])
def test_every_param_group_is_validated(bad, msg):
    """Groups used to bypass the constructor's checks (lr=nan, lambda=-1, momentum=1.0 were
    accepted): now every group is checked, at construction and in add_param_group, and a bad
    group added later is not kept."""
    m = _conv_net()
    with pytest.raises(ValueError, match="param group 1: " + msg):
        SLBI([{"params": [m[0].weight]}, {"params": [m[3].weight], **bad}])
    opt = SLBI([{"params": [m[0].weight]}])
    with pytest.raises(ValueError, match="param group 1: " + msg):
        opt.add_param_group({"params": [m[3].weight], **bad})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [m[3].weight]})               # the same group, good: fine
    assert len(opt.param_groups) == 2


def test_maximize_ascends_and_foreach_is_accepted():
    """maximize=True negates the loss gradient, as torch.optim.SGD does: with the coupling off it
    is SGD(maximize=True); with it on, maximizing L steps exactly as minimizing -L. foreach is a
    flag (no-op: the step is always multi-tensor)."""
    a, b = _conv_net(), _conv_net()
    sgd = torch.optim.SGD(a.parameters(), lr=0.05, momentum=0.9, maximize=True)
    slbi = SLBI(b.parameters(), lr=0.05, nu=math.inf, maximize=True)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (16,), generator=g)
    losses = []
    for _ in range(10):
        for m, o in ((a, sgd), (b, slbi)):
            o.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            o.step()
        losses.append(float(loss.detach()))
    assert losses[-1] > losses[0]                                 # ascending
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, atol=1e-13, rtol=0)
    c, d = _conv_net(), _conv_net()
    kw = dict(lr=0.1, nu=2.0, lam=0.05, weight_decay=1e-2)
    up = SLBI(c.parameters(), maximize=True, foreach=True, **kw)
    down = SLBI(d.parameters(), foreach=False, **kw)
    for _ in range(20):
        for m, o, sign in ((c, up, 1.0), (d, down, -1.0)):
            o.zero_grad()
            (sign * F.cross_entropy(m(x), y)).backward()
            o.step()
    for pc, pd in zip(c.parameters(), d.parameters()):
        assert torch.equal(pc, pd)
    assert up.support_sizes(c)["total"] > 0
    with pytest.raises(TypeError, match="maximize must be True or False, got 'yes'"):
        SLBI(c.parameters(), maximize="yes")
    with pytest.raises(TypeError, match="foreach must be None, True or False, got 1"):
        SLBI(c.parameters(), foreach=1)


def test_auto_state_dict_round_trip_continues_identically():
    kw = dict(lr=0.1, nu=2.0, lam=0.05)
    a = _conv_net()
    opt = SLBI(a.parameters(), **kw)
    _train(a, opt, steps=5)
    b = copy.deepcopy(a)
    opt_b = SLBI(b.parameters(), **kw)
    opt_b.load_state_dict(copy.deepcopy(opt.state_dict()))  # (state_dict shares the buffers)
    assert torch.equal(_train(a, opt, steps=5), _train(b, opt_b, steps=5))


@pytest.mark.parametrize("decay_1d", [False, True])
def test_weight_decay_on_weights_only(decay_1d):
    """The official code decays weights (2+ dims) only; weight_decay_1d=True also decays
    biases, as torch.optim.SGD does."""
    lin = nn.Linear(3, 2)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    opt = SLBI([{"params": [lin.weight], "structure": "neuron"}, {"params": [lin.bias]}],
               lr=0.5, nu=math.inf, momentum=0.0, weight_decay=0.1, weight_decay_1d=decay_1d)
    lin.weight.grad, lin.bias.grad = torch.zeros_like(w0), torch.zeros_like(b0)
    opt.step()
    torch.testing.assert_close(lin.weight.detach(), w0 * (1 - 0.05))
    torch.testing.assert_close(lin.bias.detach(), b0 * (1 - 0.05) if decay_1d else b0)


def test_entry_lambda_units():
    assert entry_lambda(1.0, OFFICIAL["lr"], OFFICIAL["nu"], OFFICIAL["steps_per_epoch"]) == 1.0
    # entry after ~ lambda*nu/(lr*|W|) steps: halving lr halves lambda; an epoch of 17 steps
    assert entry_lambda(1.0, 0.05, 20.0, 469) == pytest.approx(0.5)
    assert entry_lambda(2.0, 0.1, 40.0, 17) == pytest.approx(17 / 469)
    m = SLBIMethod({"lambda": 0.3, "lambda_unit": "absolute", "lr": 0.05})
    assert m.optimizer_lambda() == 0.3
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert m.make_optimizer(net).param_groups[0]["lambda"] == 0.3


@pytest.mark.parametrize("problem,steps", [("fmnist_lenet5", 240)])
def test_defaults_select_within_the_first_epoch(problem, steps):
    """With every default, the support is empty at the start, non-empty well within the first
    epoch and grows along the path. fmnist_lenet5 has 430 steps per epoch (~15 s on one CPU
    thread); the first ``steps`` of them keep the test short: measured with seed 0 under the
    official coupling (filters; Linear weights element-wise), the first filter enters between
    steps 80 and 100 and the support grows to the end of the epoch (2 units at step 120, 11 at
    240, 22 at 400: conv filters first, then single classifier weights). (Under the neuron
    coupling before issue 22: first units at steps 60-80, 135 at step 400.)
    (digits_mlp, 17 steps per epoch, is covered through the runner above.)"""
    from beyondsgd.bench.problems import get_problem
    from beyondsgd.bench.run.runner import DATA_SPLIT_SEED, epoch_batches
    from beyondsgd.methods.base import TrainContext
    torch.set_num_threads(1)
    prob = get_problem(problem)
    data = prob.load(DATA_SPLIT_SEED)
    spe = math.ceil(data.x_train.shape[0] / prob.batch_size)
    assert spe > steps
    ctx = TrainContext(device=torch.device("cpu"), loss_fn=prob.loss_fn, task=prob.task,
                       x_train=data.x_train, y_train=data.y_train, x_val=data.x_val[:0],
                       y_val=data.y_val[:0], batch_size=prob.batch_size, epochs=1,
                       steps_per_epoch=spe)
    torch.manual_seed(0)
    model = prob.build_model(data, "relu", 0)
    method = SLBIMethod()
    model = method.prepare(model, ctx)
    sizes = [method.optimizer.support_sizes(model)["total"]]
    for k, batch in enumerate(epoch_batches(data.x_train, data.y_train, prob.batch_size, 0, 0)):
        if k == steps:
            break
        method.train_step(model, batch, prob.loss_fn)
        if (k + 1) % 40 == 0:
            sizes.append(method.optimizer.support_sizes(model)["total"])
    assert sizes[0] == 0 and sizes[-1] > 0
    assert all(b >= a for a, b in zip(sizes, sizes[1:]))
    assert sizes[-1] > sizes[-2] > 0                      # still growing


def test_element_prox_of_a_complex_entry_shrinks_its_modulus():
    """Element-wise lasso on complex V: the prox of λ|z| is max(0, 1 - λ/|z|)·z (checked
    against polar form: the modulus is soft-thresholded, the phase kept)."""
    from beyondsgd.methods.slbi.update import prox_group_lasso

    g = torch.Generator().manual_seed(0)
    v = torch.randn(5, 4, generator=g, dtype=torch.complex128)
    lam = 0.8
    out = prox_group_lasso(v, lam, "element")
    r, phase = v.abs(), torch.angle(v)
    want = torch.polar((r - lam).clamp_min(0), phase)
    assert torch.allclose(out, want, rtol=0, atol=1e-15)
    assert (out == 0).any() and (out != 0).any()
