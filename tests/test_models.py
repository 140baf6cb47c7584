import pytest
import torch
from torch import nn

from beyondsgd import models as M


@pytest.mark.parametrize("build,x", [
    (lambda a, s: M.mlp(64, [32, 16], 10, a, s), torch.randn(5, 64)),
    (lambda a, s: M.cnn_2c2d(1, 10, a, s), torch.randn(2, 1, 28, 28)),
    (lambda a, s: M.lenet5(1, 10, a, s), torch.randn(2, 1, 28, 28)),
    (lambda a, s: M.lenet5(1, 10, a, s, conv3=True), torch.randn(2, 1, 28, 28)),
    (lambda a, s: M.lenet5_official(1, 10, a, s), torch.randn(2, 1, 28, 28)),
    (lambda a, s: M.cnn_mnist1d(40, 10, 8, a, s), torch.randn(3, 40)),
    (lambda a, s: M.regression_mlp(3, [4], 2, a, s), torch.randn(3, 3)),
])
def test_models_shapes_seed_and_activation(build, x):
    state = torch.get_rng_state()
    m1, m2, m3 = build("relu", 0), build("relu", 0), build("relu", 1)
    assert torch.equal(torch.get_rng_state(), state), "model init must not touch the global RNG"
    for p1, p2, p3 in zip(m1.parameters(), m2.parameters(), m3.parameters()):
        assert torch.equal(p1, p2)
        assert not torch.equal(p1, p3)
    out = m1(x)
    assert out.shape[0] == x.shape[0]
    t = build("tanh", 0)
    assert any(isinstance(m, nn.Tanh) for m in t.modules())
    assert not any(isinstance(m, nn.ReLU) for m in t.modules())
    custom = build(lambda: nn.LeakyReLU(0.3), 0)
    assert any(isinstance(m, nn.LeakyReLU) for m in custom.modules())


def test_default_init_is_uniform_fan_in():
    m = M.mlp(100, [50], 10, seed=0)
    w = m[1].weight
    assert w.abs().max() <= 1 / 100**0.5 + 1e-7


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown activation 'swishy'"):
        M.mlp(4, [4], 2, "swishy")
    with pytest.raises(ValueError, match="positive"):
        M.mlp(4, [0], 2)
    with pytest.raises(ValueError, match="seed"):
        M.mlp(4, [4], 2, seed=1.5)
    with pytest.raises(ValueError, match="no nn.Linear"):
        M.last_linear(nn.Sequential(nn.ReLU()))
    name, layer = M.last_linear(M.mlp(4, [4], 2))
    assert name == "3" and layer.out_features == 2


def test_lenet5_official_conv3_is_a_convolution_with_the_same_function():
    """The official DessiLBI LeNet has conv3 = Conv2d(16, 120, 5); on 28x28 inputs it sees a 5x5
    map, so it is fc120 in another shape: same seed, same numbers, same outputs."""
    ours, official = M.lenet5(seed=3), M.lenet5_official(seed=3)
    conv3 = official[6]
    assert isinstance(conv3, nn.Conv2d) and tuple(conv3.weight.shape) == (120, 16, 5, 5)
    assert isinstance(official[8], nn.Flatten) and official[9].in_features == 120
    convs = [m for m in official.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 and len([m for m in official.modules() if isinstance(m, nn.Linear)]) == 2
    assert torch.equal(conv3.weight.reshape(120, -1), ours[7].weight)
    assert torch.equal(conv3.bias, ours[7].bias)
    x = torch.randn(7, 1, 28, 28)
    torch.testing.assert_close(official(x), ours(x), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in official.parameters()) == \
        sum(p.numel() for p in ours.parameters()) == 61706
