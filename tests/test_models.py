"""Every model variant builds and gives finite outputs of the right shape; the residual flag changes
only the skip connection (timm-style model tests)."""
from __future__ import annotations

import pytest
import torch

from trainables.config import ConfigError, from_dict
from trainables.lab1.classifier import Lab1Config, build_model
from trainables.models import MLP, ConvBlock, MLPBlock, cnn

SHAPES = [(1, 8, 8), (3, 32, 32)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("model", ["mlp", "cnn", "resnet18"])
@pytest.mark.parametrize("residual", [False, True])
def test_every_variant_builds_and_is_finite(shape, model, residual):
    cfg = Lab1Config(model=model, depth=2, width=8, residual=residual)
    net = build_model(cfg, shape, 10, (0.5,) * shape[0], (0.25,) * shape[0]).eval()
    out = net(torch.rand(4, *shape))
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()


def test_residual_flag_changes_only_the_skip_in_mlp():
    torch.manual_seed(0)
    plain = MLP((1, 8, 8), 10, 16, 3, False, (0.5,), (0.25,))
    torch.manual_seed(0)
    res = MLP((1, 8, 8), 10, 16, 3, True, (0.5,), (0.25,))
    # Same parameters, same initial values: the only difference is the forward pass's skip.
    assert plain.state_dict().keys() == res.state_dict().keys()
    for k, v in plain.state_dict().items():
        assert torch.equal(v, res.state_dict()[k]), k
    x = torch.rand(5, 1, 8, 8)
    assert not torch.allclose(plain(x), res(x))


def test_mlp_block_adds_exactly_the_shortcut():
    block = MLPBlock(6, residual=True)
    x = torch.randn(3, 6)
    inner = block.fc2(block.act(block.fc1(x)))
    assert torch.allclose(block(x), torch.relu(inner + x))
    block.residual = False
    assert torch.allclose(block(x), torch.relu(inner))


def test_conv_block_residual_differs_only_by_shortcut():
    torch.manual_seed(0)
    plain = ConvBlock(4, 4, 1, residual=False)
    torch.manual_seed(0)
    res = ConvBlock(4, 4, 1, residual=True)
    assert plain.state_dict().keys() == res.state_dict().keys()  # identity shortcut: no parameters
    plain.eval(), res.eval()
    x = torch.randn(2, 4, 8, 8)
    body = plain.bn2(plain.conv2(plain.act(plain.bn1(plain.conv1(x)))))
    assert torch.allclose(res(x), torch.relu(body + x), atol=1e-6)
    assert torch.allclose(plain(x), torch.relu(body), atol=1e-6)


def test_cnn_stages_double_width_and_halve_resolution():
    net = cnn(3, 10, 8, 2, True, (0.5,) * 3, (0.25,) * 3, num_stages=3)
    maps = net.feature_maps(torch.rand(2, 3, 32, 32))
    assert maps.shape == (2, 32, 8, 8)
    assert net.features(torch.rand(2, 3, 32, 32)).shape == (2, 32)
    assert len(net.stages) == 3 and all(len(s) == 2 for s in net.stages)


def test_resnet18_has_cifar_stem():
    net = build_model(Lab1Config(model="resnet18"), (3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3)
    conv = net.stem[0]
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    assert net.feature_maps(torch.rand(1, 3, 32, 32)).shape == (1, 512, 4, 4)


def test_depth_zero_mlp_is_one_hidden_layer_and_conv_nets_refuse_it():
    """The lab's one-hidden-layer MLP: depth=0 is Linear(in, width), ReLU, Linear(width, classes)."""
    net = build_model(Lab1Config(model="mlp", depth=0, width=3), (1, 8, 8), 10, (0.5,), (0.25,))
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 3), (3, 10)]
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    for model in ("cnn", "resnet18"):  # a conv stage needs at least one block
        with pytest.raises(ConfigError, match=r"^depth: must be >= 1, got 0$"):
            Lab1Config(model=model, depth=0)
        with pytest.raises(ConfigError, match=r"^depth: "):
            from_dict(Lab1Config, {"model": model, "depth": "0"})
    with pytest.raises(ConfigError, match=r"^depth: must be >= 0 \(0 = one hidden layer, MLP only\), got -1$"):
        Lab1Config(model="mlp", depth=-1)
    with pytest.raises(ValueError, match="^depth: "):
        cnn(1, 10, 8, 0, False, (0.5,), (0.25,))
