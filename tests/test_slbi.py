"""DessiLBI (SLBI): the update rule against a hand computation of the paper's equations, the
SGD limit, the inverse-scale-space path on a problem with a known sparse solution, the
torch.optim contract (state_dict, schedulers, param groups), bad input, and the runner hook."""

import copy
import math

import pytest
import torch
from torch import nn

from beyondsgd.methods.slbi import SLBI, prox_group_lasso, slbi_param_groups

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
    d = g + wd * w
    coupled = structure is not None
    gam = st.get("G", torch.zeros_like(w)) if coupled else None
    v = st.get("V", torch.zeros_like(w)) if coupled else None
    if coupled and coupling == "paper":
        d = d + (w - gam) / nu                      # grad_W Lbar = grad L + (W - Gamma)/nu
    buf = d.clone() if st.get("buf") is None else mom * st["buf"] + d
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
                nesterov=nesterov, weight_decay=wd)       # kappa * lr = 0.1
    big_nu = SLBI(slbi_param_groups(c), lr=0.1, nu=1e9, momentum=0.9, nesterov=nesterov,
                  weight_decay=wd)
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
    assert [g["structure"] for g in opt2.param_groups] == ["filter", "neuron", None]
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
    from beyondsgd.models import cnn_2c2d, lenet5
    m = lenet5(seed=0)
    groups = slbi_param_groups(m)
    by = {g["name"]: g for g in groups}
    assert [p.shape for p in by["conv"]["params"]] == [m[0].weight.shape, m[3].weight.shape]
    assert by["conv"]["structure"] == "filter" and by["linear"]["structure"] == "neuron"
    assert [p.shape for p in by["linear"]["params"]] == [m[7].weight.shape, m[9].weight.shape]
    assert "output" not in by                 # classifier rows (classes) stay dense by default
    uncoupled = by["uncoupled"]["params"]
    assert by["uncoupled"]["structure"] is None
    assert len(uncoupled) == 6                # five biases and the classifier's weight
    assert any(p is m[11].weight for p in uncoupled)
    # every parameter appears exactly once, in some group
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in m.parameters())
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
                    ({"momentum": 0.0, "nesterov": True}, "Nesterov"),
                    ({"coupling": "inside"}, "coupling must be"),
                    ({"lambda_scaling": "size"}, "lambda_scaling must be"),
                    ({"weight_decay": float("inf")}, "weight_decay must be")]:
        with pytest.raises(ValueError, match=msg):
            SLBI(lin.parameters(), **kw)
    with pytest.raises(ValueError, match="lambda must be"):
        SLBI([{"params": [lin.weight], "structure": "neuron", "lambda": -1.0}])
    with pytest.raises(ValueError, match="no Γ"):
        SLBI(lin.parameters()).gamma(lin.weight)
    with pytest.raises(ValueError, match="not managed"):
        SLBI([lin.weight]).structure(lin.bias)


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
    assert 0 < o1.support_sizes(m1)["total"] <= 16


def test_runner_records_support_and_path():
    from beyondsgd.bench.runner import run_trial
    # the official code's coupling (outside the momentum buffer) selects units within 3 epochs
    res = run_trial("digits_mlp", "slbi", {"nu": 10.0, "lambda": 0.2, "coupling": "code"},
                    seed=0, epochs=3)
    assert res.status == "finished"
    first, last = res.evals[0], res.final
    assert first["support_total"] == 0 and first["support/1"] == 0
    assert last["support_total"] > 0
    assert last["support_total"] == last["support/1"] + last["support/3"]
    assert 0 < last["support_frac"] <= 1 and 0 < last["sparse_val_metric"] <= 1
    assert last["val_metric"] > 0.8
    paths = [e for e in res.events if e["kind"] == "slbi_path"]
    assert [e["epoch"] for e in paths] == [1, 2, 3]
    entered = sum(len(v) for e in paths for v in e["entered"].values())
    left = sum(len(v) for e in paths for v in e["left"].values())
    assert entered - left == last["support_total"]
