"""Sparsity tools: the sparse model W * 1[Gamma != 0], support sizes, the selection path,
pruning by path order / magnitude / at random, physical pruning (identical outputs to the masked
model, fewer parameters), fixed-mask retraining (winning tickets) and bad input."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from beyondsgd.methods.slbi import SLBI, slbi_param_groups
from beyondsgd.methods.slbi import export as E
from beyondsgd.methods.slbi import sparsity as S
from beyondsgd.models import cnn_2c2d, lenet5, lenet5_official, mlp


def _rand_bias(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def _unit_masks(model, names, seed=0, frac=0.5):
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    out = {}
    for n in names:
        rows = params[n].shape[0]
        m = torch.rand(rows, generator=g) < frac
        m[0] = True
        out[n] = m
    return out


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "relu"])
def test_export_mlp_same_outputs_fewer_params(act):
    net = _rand_bias(mlp(12, [20, 16], 5, activation=act, seed=0))
    masks = _unit_masks(net, ["1.weight", "3.weight"], seed=1)
    small = E.export_pruned(net, masks)             # fold act(bias) of removed units
    x = torch.randn(50, 12)
    torch.testing.assert_close(small(x), S.masked_model(net, masks, zero_bias=False)(x),
                               atol=1e-5, rtol=1e-5)
    k1, k2 = int(masks["1.weight"].sum()), int(masks["3.weight"].sum())
    assert (small[1].out_features, small[3].in_features, small[3].out_features,
            small[5].in_features) == (k1, k1, k2, k2)
    assert E.count_parameters(small) == 12 * k1 + k1 + k1 * k2 + k2 + k2 * 5 + 5
    # removed_bias="zero" matches the masked model with removed biases zeroed (the default
    # for unit masks, the official prune)
    small0 = E.export_pruned(net, masks, removed_bias="zero")
    for zb in (True, "units"):
        torch.testing.assert_close(small0(x), S.masked_model(net, masks, zero_bias=zb)(x),
                                   atol=1e-5, rtol=1e-5)
    # and the folding mattered: with tanh/sigmoid the two variants differ
    if act != "relu":
        assert not torch.allclose(small0(x), small(x), atol=1e-3)


def test_export_lenet5_filters_and_neurons():
    net = _rand_bias(lenet5(seed=0))      # conv2 has no padding: folding is exact everywhere
    masks = _unit_masks(net, ["0.weight", "3.weight", "7.weight", "9.weight"], seed=2)
    small = E.export_pruned(net, masks)
    x = torch.randn(6, 1, 28, 28)
    torch.testing.assert_close(small(x), S.masked_model(net, masks, zero_bias=False)(x),
                               atol=1e-5, rtol=1e-5)
    k = {n: int(m.sum()) for n, m in masks.items()}
    assert small[0].out_channels == k["0.weight"] == small[3].in_channels
    assert small[3].out_channels == k["3.weight"]
    assert small[7].in_features == 25 * k["3.weight"] and small[7].out_features == k["7.weight"]
    assert small[11].in_features == k["9.weight"] and small[11].out_features == 10
    assert E.count_parameters(small) < E.count_parameters(net)


def test_export_padded_conv_needs_zero_bias():
    net = _rand_bias(cnn_2c2d(seed=0))                # conv2 is padded: folding is not exact
    masks = _unit_masks(net, ["0.weight", "3.weight", "7.weight"], seed=3)
    with pytest.raises(ValueError, match="padded convolution.*removed_bias='zero'"):
        E.export_pruned(net, masks)
    small = E.export_pruned(net, masks, removed_bias="zero")
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(small(x), S.masked_model(net, masks, zero_bias=True)(x),
                               atol=1e-5, rtol=1e-5)
    assert small[3].in_channels == int(masks["0.weight"].sum())
    assert small[7].in_features == 49 * int(masks["3.weight"].sum())
    # ReLU with non-positive removed biases emits exact zeros: folding is then allowed
    with torch.no_grad():
        net[0].bias[~masks["0.weight"]] = -1.0
    small_f = E.export_pruned(net, masks)
    torch.testing.assert_close(small_f(x), S.masked_model(net, masks, zero_bias=False)(x),
                               atol=1e-5, rtol=1e-5)


def test_export_element_masks_and_sparse_slbi_model():
    torch.manual_seed(0)
    net = lenet5(seed=1)
    opt = SLBI(slbi_param_groups(net, conv="filter", linear="element"), lr=0.2, nu=1.0,
               lam=0.02, momentum=0.5)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for _ in range(8):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    assert all(bool(torch.isfinite(p).all()) for p in net.parameters())
    gm = S.gamma_masks(net, opt)
    assert set(gm) == {"0.weight", "3.weight", "7.weight", "9.weight", "11.weight"}
    sm = S.sparse_model(net, opt)
    params, sparams = dict(net.named_parameters()), dict(sm.named_parameters())
    for n, p in params.items():          # W * 1[Gamma != 0] for coupled, W elsewhere
        expect = p * (opt.gamma(p) != 0) if n in gm else p
        assert torch.equal(sparams[n], expect)
    units = S.unit_masks_from_gamma(net, opt)
    assert units["0.weight"].shape == (6,) and units["7.weight"].shape == (120, 400)
    sizes = S.support_sizes(units)
    assert 0 < sizes["total"] == sum(v for k, v in sizes.items() if k != "total")
    assert sizes == opt.support_sizes(net)
    # element masks of Linear layers: a row survives if any weight does; outputs still equal
    small = E.export_pruned(net, units, removed_bias="fold")
    torch.testing.assert_close(small(x), S.masked_model(net, units, zero_bias=False)(x),
                               atol=1e-5, rtol=1e-5)


def test_official_lenet_prune_conv3_by_path_order():
    """The official demo's experiment on the official LeNet (conv3 a convolution): train with
    SLBI in the official configuration (filters for conv, every Linear weight element-wise,
    the classifier included), record the path, prune 80% of conv3's filters by path order and
    export: the smaller network computes the masked network's function."""
    torch.manual_seed(0)
    net = _rand_bias(lenet5_official(seed=1))
    groups = slbi_param_groups(net, conv="filter", linear="element", output="element")
    assert [tuple(p.shape) for p in groups[0]["params"]][-1] == (120, 16, 5, 5)
    opt = SLBI(groups, lr=0.1, nu=1.0, lam=0.5)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    path = S.SelectionPath()
    for epoch in range(1, 21):                       # "epochs" of one step: a finer path
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        path.update(epoch, S.unit_masks_from_gamma(net, opt))
    entry = path.entry["6.weight"]
    assert entry.shape == (120,) and 0 < int(torch.isfinite(entry).sum()) < 120
    masks = S.path_order_masks(net, path, ratio=0.8, names=["6.weight"])
    keep = masks["6.weight"]
    assert int(keep.sum()) == 24
    # the kept filters are the earliest selected ones (filter norms < 1 here, so the official
    # score norm - epoch never lets a later filter overtake an earlier one)
    assert float(entry[keep].max()) <= float(entry[~keep].min())
    pruned = S.masked_model(net, masks)       # the official prune: removed filters' biases too
    assert bool((pruned[6].bias[~keep] == 0).all()) and bool((pruned[6].bias[keep] != 0).all())
    small = E.export_pruned(net, masks, removed_bias="zero")
    assert small[6].out_channels == 24 and small[9].in_features == 24
    xt = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(small(xt), pruned(xt), atol=1e-5, rtol=1e-5)
    folded = E.export_pruned(net, masks)              # conv3 unpadded: folding is exact
    torch.testing.assert_close(folded(xt), S.masked_model(net, masks, zero_bias=False)(xt),
                               atol=1e-5, rtol=1e-5)
    assert E.count_parameters(small) == E.count_parameters(net) - 96 * (16 * 25 + 1 + 84)
    # the sparse model W * 1[Gamma != 0] keeps conv3's unselected filters at zero
    sm = S.sparse_model(net, opt)
    off = ~S.unit_masks_from_gamma(net, opt)["6.weight"]
    assert bool((sm[6].weight[off] == 0).all())


def test_export_rejects_bad_input():
    net = mlp(4, [6], 3, seed=0)
    with pytest.raises(ValueError, match="output layer"):
        E.export_pruned(net, {"3.weight": torch.tensor([True, False, True])})
    with pytest.raises(ValueError, match="does not have"):
        E.export_pruned(net, {"9.weight": torch.ones(6, dtype=torch.bool)})
    with pytest.raises(ValueError, match="keeps no units"):
        E.export_pruned(net, {"1.weight": torch.zeros(6, dtype=torch.bool)})
    with pytest.raises(ValueError, match="removed_bias"):
        E.export_pruned(net, {}, removed_bias="drop")
    bn = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))
    with pytest.raises(ValueError, match="does not support layer 1 \\(BatchNorm1d\\)"):
        E.export_pruned(bn, {"0.weight": torch.ones(6, dtype=torch.bool)})
    with pytest.raises(ValueError, match="nn.Sequential"):
        E.export_pruned(nn.Linear(2, 2), {})
    with pytest.raises(ValueError, match="fits neither"):
        S.masked_model(net, {"1.weight": torch.ones(5, dtype=torch.bool)})


def test_selection_path_entries_and_round_trip():
    path = S.SelectionPath()
    seq = [torch.tensor([0, 0, 0, 0]), torch.tensor([0, 1, 0, 0]), torch.tensor([1, 1, 0, 0]),
           torch.tensor([1, 0, 0, 1])]
    recs = [path.update(e, {"a": m.bool()}) for e, m in enumerate(seq)]
    assert path.entry["a"].tolist() == [2, 1, float("inf"), 3]
    assert recs[1]["entered"]["a"].tolist() == [1] and recs[3]["left"]["a"].tolist() == [1]
    assert [r["sizes"]["total"] for r in recs] == [0, 1, 2, 2]
    assert path.support_at(2)["a"].tolist() == [True, True, False, False]
    p2 = S.SelectionPath()
    p2.load_state_dict(copy.deepcopy(path.state_dict()))
    assert torch.equal(p2.entry["a"], path.entry["a"]) and p2.sizes == path.sizes
    r1 = path.update(4, {"a": torch.tensor([True, True, True, True])})
    r2 = p2.update(4, {"a": torch.tensor([True, True, True, True])})
    assert r1["entered"]["a"].tolist() == r2["entered"]["a"].tolist() == [1, 2]


def test_path_order_magnitude_and_random_masks():
    net = mlp(3, [5], 2, seed=0)
    with torch.no_grad():
        net[1].weight.copy_(torch.arange(1.0, 6.0).view(5, 1).expand(5, 3))  # row norms ascend
    path = S.SelectionPath()
    path.update(1, {"1.weight": torch.tensor([False, True, False, True, False])})
    path.update(2, {"1.weight": torch.tensor([False, True, True, True, False])})
    # keep 3 of 5: rows 1 and 3 (epoch 1; row 3 has the larger norm first), then row 2 (epoch 2)
    m = S.path_order_masks(net, path, ratio=0.4)["1.weight"]
    assert m.tolist() == [False, True, True, True, False]
    m2 = S.path_order_masks(net, path, ratio=0.8)["1.weight"]
    assert m2.tolist() == [False, False, False, True, False]      # tie at epoch 1 -> norm
    assert S.path_order_masks(net, path, ratio=0.0)["1.weight"].all()
    mag = S.magnitude_masks(net, {"1.weight": 2})["1.weight"]
    assert mag.tolist() == [False, False, False, True, True]
    el = S.magnitude_masks(net, {"3.weight": 4}, unit="element")["3.weight"]
    assert el.shape == (2, 5) and int(el.sum()) == 4
    assert bool(net[3].weight.abs()[el].min() >= net[3].weight.abs()[~el].max())
    g = torch.Generator().manual_seed(0)
    r = S.random_masks({"1.weight": m}, generator=g)["1.weight"]
    assert int(r.sum()) == 3 and r.shape == m.shape
    r_again = S.random_masks({"1.weight": m}, generator=torch.Generator().manual_seed(0))
    assert torch.equal(r, r_again["1.weight"])
    with pytest.raises(ValueError, match="ratio must be in"):
        S.path_order_masks(net, path, ratio=1.5)
    with pytest.raises(ValueError, match="no record"):
        S.path_order_masks(net, path, ratio=0.5, names=["3.weight"])
    with pytest.raises(ValueError, match="cannot keep 9"):
        S.magnitude_masks(net, {"1.weight": 9})


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_fixed_mask_retraining_keeps_zeros(opt_name):
    init = _rand_bias(mlp(6, [10], 3, activation="tanh", seed=0))
    masks = {"1.weight": torch.tensor([1, 0, 1, 1, 0, 0, 1, 1, 0, 1]).bool()}
    model, handle = S.ticket(init, masks)
    assert torch.equal(init[1].weight, mlp(6, [10], 3, seed=0)[1].weight)   # init untouched
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
           if opt_name == "sgd" else torch.optim.Adam(model.parameters(), lr=1e-2))
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    for _ in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    off = ~masks["1.weight"]
    assert bool((model[1].weight[off] == 0).all()) and bool((model[1].bias[off] == 0).all())
    assert not torch.allclose(model[1].weight[~off], init[1].weight[~off])
    # the retrained masked net equals its physically smaller export
    small = E.export_pruned(model, masks, removed_bias="zero")
    torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=1e-5)
    handle.remove()
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    assert bool((model[1].weight.grad[off] != 0).any())          # hooks are gone


# --------------------------------------------------------------------------------------------
# Pruning defaults follow the official code (issue 22)
# --------------------------------------------------------------------------------------------
def _official_keep(scores, percent, unit):
    """The official prune (prune_layer_by_order_*), written from its description: threshold =
    numpy percentile (linear) of the scores; conv filters below it are pruned, FC weights above
    it are kept."""
    thr = np.percentile(scores.numpy(), percent)
    return torch.from_numpy(scores.numpy() >= thr if unit else scores.numpy() > thr)


def test_path_order_default_is_the_official_score():
    """On a constructed path where entry epochs and norms disagree, the default order keeps
    exactly the units the official score norm - epoch keeps (epoch 2000 for never selected);
    the lexicographic order (entry, then norm) is an option and keeps other filters."""
    g = torch.Generator().manual_seed(0)
    net = lenet5_official(seed=0)
    w3, w4 = net[6].weight, net[9].weight                       # conv3 (120 filters), fc1
    norms = 0.5 + 4.5 * torch.rand(120, generator=g, dtype=torch.float64)
    entry3 = torch.randint(1, 8, (120,), generator=g).double()
    entry3[torch.rand(120, generator=g) < 0.2] = float("inf")   # never selected
    entry4 = torch.randint(1, 4, tuple(w4.shape), generator=g).double()
    entry4[torch.rand(tuple(w4.shape), generator=g) < 0.5] = float("inf")
    with torch.no_grad():
        w3.mul_((norms / w3.flatten(1).norm(dim=1).double()).float().view(-1, 1, 1, 1))
        w4.mul_(1.0 + 3.0 * torch.rand(tuple(w4.shape), generator=g))
    path = S.SelectionPath()
    path.entry = {"6.weight": entry3, "9.weight": entry4}
    got = S.path_order_masks(net, path, 0.8, names=["6.weight", "9.weight"])
    never = lambda e: torch.where(torch.isinf(e), torch.full_like(e, 2000.0), e)  # noqa: E731
    score3 = w3.detach().flatten(1).norm(dim=1).double() - never(entry3)
    score4 = w4.detach().abs().double() - never(entry4)
    assert torch.equal(got["6.weight"], _official_keep(score3, 80, unit=True))
    assert torch.equal(got["9.weight"], _official_keep(score4, 80, unit=False))
    assert int(got["6.weight"].sum()) == 24 and int(got["9.weight"].sum()) == 2016
    # the option: earliest entry first, larger norm breaking ties (an independent sort)
    lex = S.path_order_masks(net, path, 0.8, names=["6.weight"], order="entry_then_norm")
    n3 = w3.detach().flatten(1).norm(dim=1).tolist()
    ranked = sorted(range(120), key=lambda i: (entry3[i].item(), -n3[i]))
    expect = torch.zeros(120, dtype=torch.bool)
    expect[ranked[:24]] = True
    assert torch.equal(lex["6.weight"], expect)
    assert int((lex["6.weight"] != got["6.weight"]).sum()) == 10     # 5 filters swap places
    with pytest.raises(ValueError, match="order must be one of .*'entry_then_norm'.*got 'norm'"):
        S.path_order_masks(net, path, 0.8, names=["6.weight"], order="norm")


def test_masked_model_zeroes_removed_units_biases_by_default_as_the_official_prune():
    """The official prune (prune_bias=True in the LeNet demo) zeroes the biases of the filters
    it prunes and leaves FC biases alone: the default zero_bias='units'. True also zeroes rows an
    element mask empties; False touches no bias (the sparse model W * 1[Gamma != 0])."""
    net = _rand_bias(lenet5_official(seed=0))
    keep = torch.arange(120) % 5 == 0
    fc = torch.ones(84, 120, dtype=torch.bool)
    fc[3] = False                                               # row 3 emptied element-wise
    masks = {"6.weight": keep, "9.weight": fc}
    b3, b4 = net[6].bias.detach().clone(), net[9].bias.detach().clone()
    default = S.masked_model(net, masks)
    assert torch.equal(default[6].bias, b3 * keep) and torch.equal(default[9].bias, b4)
    every = S.masked_model(net, masks, zero_bias=True)
    assert torch.equal(every[6].bias, b3 * keep) and every[9].bias[3] == 0
    assert torch.equal(every[9].bias[fc.any(1)], b4[fc.any(1)])
    none = S.masked_model(net, masks, zero_bias=False)
    assert torch.equal(none[6].bias, b3) and torch.equal(none[9].bias, b4)
    for m in (default, every, none):
        assert bool((m[6].weight[~keep] == 0).all()) and bool((m[9].weight[3] == 0).all())
    with pytest.raises(ValueError, match="zero_bias must be 'units', True or False, got 'all'"):
        S.masked_model(net, masks, zero_bias="all")
