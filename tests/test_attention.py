"""Ouyang et al.'s online attention (eqs. 1-4) against hand computations."""
import math

import pytest
import torch
from torch import nn

from engine.attention import ALPHA, BETA, LAMBDA, attention_loss, attention_map, attention_maps_of, total_loss, trimmed
from engine.errors import ConfigError
from engine.models.backbones import StagedNet


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_paper_constants():
    assert (ALPHA, BETA, LAMBDA) == (100.0, 0.4, 0.5)


def test_attention_map_is_the_relu_of_the_class_weighted_sum():
    torch.manual_seed(0)
    f = torch.randn(2, 3, 2, 2)
    w = torch.randn(4, 3)
    cls = torch.tensor([3, 1])
    expected = torch.stack([(f[n] * w[c][:, None, None]).sum(0) for n, c in enumerate(cls.tolist())]).clamp(min=0)
    torch.testing.assert_close(attention_map(f, w, cls), expected)


def test_attention_map_in_3d_by_hand():
    f = torch.tensor([[[[[1.0, 2.0]]], [[[3.0, 0.5]]]]])  # (N=1, C=2, D=1, H=1, W=2)
    w = torch.tensor([[1.0, -1.0], [2.0, 1.0]])
    assert attention_map(f, w, torch.tensor([0])).tolist() == [[[[0.0, 1.5]]]]  # relu(1-3), relu(2-0.5)
    assert attention_map(f, w, torch.tensor([1])).tolist() == [[[[5.0, 4.5]]]]


def test_trimmed_upsamples_normalises_and_thresholds_by_hand():
    a = torch.tensor([[[0.0, 2.0]]])  # (N=1, H=1, W=2) -> (2, 4)
    t = trimmed(a, (2, 4), alpha=10.0, beta=0.4)
    # bilinear, align_corners=False: samples at x = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1)
    # give 0, 0.5, 1.5, 2; normalised 0, 0.25, 0.75, 1
    row = [_sigmoid(10 * (v - 0.4)) for v in (0.0, 0.25, 0.75, 1.0)]
    torch.testing.assert_close(t, torch.tensor([[row, row]]))


def test_trimmed_constant_3d_map_normalises_to_zero():
    t = trimmed(torch.full((2, 1, 1, 1), 7.0), (2, 3, 4))
    assert t.shape == (2, 2, 3, 4)
    torch.testing.assert_close(t, torch.full((2, 2, 3, 4), _sigmoid(-ALPHA * BETA)))


def test_attention_loss_is_zero_when_t_equals_the_mask():
    m = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]]]])
    assert attention_loss(m.clone(), m.bool()).tolist() == [0.0]


def test_attention_loss_by_hand_on_2x2x2():
    t = torch.tensor([[[[0.5, 1.0], [0.0, 0.0]], [[0.25, 0.0], [0.0, 0.0]]]])
    m = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]]])
    # squared differences 0.25 + 0 + 0.0625 + 1 = 1.3125; sum T = 1.75, sum M = 3
    two = attention_loss(torch.cat([t, m]), torch.cat([m, m]))
    torch.testing.assert_close(two, torch.tensor([1.3125 / 4.75, 0.0]))
    assert total_loss(torch.tensor(1.0), two[0]).item() == pytest.approx(1 + 0.5 * 1.3125 / 4.75)


def test_no_gradient_reaches_the_classifier_through_the_attention_loss():
    torch.manual_seed(1)
    classifier = nn.Linear(3, 2)
    f = torch.randn(2, 3, 2, 2, 2, requires_grad=True)
    soft = trimmed(attention_map(f, classifier.weight, torch.tensor([1, 1])), (4, 4, 4))
    attention_loss(soft, torch.rand(2, 4, 4, 4) > 0.5).sum().backward()
    assert classifier.weight.grad is None
    assert f.grad is not None and f.grad.abs().sum() > 0


def _tiny(arch: str, classifier: nn.Module) -> StagedNet:
    blocks = [nn.Sequential(nn.Conv2d(3 if i == 0 else 4, 4, 3, stride=2, padding=1), nn.ReLU()) for i in range(5)]
    return StagedNet(arch, blocks, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)), classifier)


def test_attention_maps_of_a_staged_net_are_at_the_input_size():
    torch.manual_seed(2)
    model = _tiny("resnet18", nn.Linear(4, 2))
    x = torch.randn(3, 3, 64, 48)
    soft = attention_maps_of(model, x, torch.tensor([0, 1, 1]))
    expected = trimmed(attention_map(model.forward_blocks(x), model.classifier.weight, torch.tensor([0, 1, 1])), (64, 48))
    assert soft.shape == (3, 64, 48)
    torch.testing.assert_close(soft, expected)


def test_attention_maps_of_refuses_a_multi_layer_head():
    model = _tiny("alexnet", nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    with pytest.raises(ConfigError, match="resnet3d18"):
        attention_maps_of(model, torch.zeros(1, 3, 64, 64), torch.tensor([0]))
