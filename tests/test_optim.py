import math

import pytest
import torch
from torch import nn

from pretrain.optim import LARS, build_optimizer, cosine_lr_factor, ema_momentum, param_groups


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def test_param_groups_exclude_bias_and_bn():
    groups = param_groups(_model(), weight_decay=0.1)
    regular, excluded = groups
    assert [p.shape for p in regular["params"]] == [torch.Size([4, 3, 3, 3]), torch.Size([2, 4, 1, 1])]
    assert len(excluded["params"]) == 4  # conv biases + BN weight/bias
    assert excluded["weight_decay"] == 0.0 and excluded["lars_exclude"]


def test_lars_step_adapts_weights_but_not_excluded_params():
    model = _model()
    opt = build_optimizer(model, {"type": "LARS", "lr": 0.5, "weight_decay": 0.1, "momentum": 0.9, "eta": 0.02})
    assert isinstance(opt, LARS)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        w, g = before[n], grads[n]
        if p.ndim > 1:  # trust ratio η‖w‖/‖g + λw‖ on the decayed gradient
            d = g + 0.1 * w
            expected = w - 0.5 * (0.02 * w.norm() / d.norm()) * d
        else:  # excluded: plain SGD step, no decay, no adaptation
            expected = w - 0.5 * g
        torch.testing.assert_close(p.detach(), expected, msg=n)


def test_cosine_schedule_and_ema_momentum_endpoints():
    assert cosine_lr_factor(0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert cosine_lr_factor(9, 100, warmup_steps=10) == pytest.approx(1.0)
    assert cosine_lr_factor(10, 100, warmup_steps=10) == pytest.approx(1.0)
    assert cosine_lr_factor(55, 100, warmup_steps=10) == pytest.approx(0.5)
    assert cosine_lr_factor(100, 100, warmup_steps=10) == pytest.approx(0.0, abs=1e-12)
    assert ema_momentum(0, 1000, 0.996) == pytest.approx(0.996)
    assert ema_momentum(500, 1000, 0.996) == pytest.approx(0.998)
    assert ema_momentum(1000, 1000, 0.996) == pytest.approx(1.0)
    assert ema_momentum(250, 1000, 0.99) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)
