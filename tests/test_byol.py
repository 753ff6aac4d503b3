import torch
from torchvision.models import resnet50

from pretrain.models import ResNetEncoder
from pretrain.objectives import BYOL

ENC = {"arch": "resnet14", "output_stride": 8}
HEADS = {"projector": {"hidden_channels": 32, "out_channels": 16}, "predictor": {"hidden_channels": 32}}


def test_encoder_keeps_torchvision_names_and_output_stride():
    enc = ResNetEncoder("resnet50", output_stride=8)
    tv = resnet50()
    expected = {k for k in tv.state_dict() if not k.startswith("fc.")}
    assert set(enc.state_dict()) == expected
    x = torch.randn(1, 3, 64, 96)
    assert enc.eval()(x).shape == (1, 2048, 8, 12)
    assert ResNetEncoder("resnet14", output_stride=32).eval()(x).shape == (1, 2048, 2, 3)


def test_momentum_update_is_the_ema_formula():
    torch.manual_seed(0)
    model = BYOL(ENC, **HEADS)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
    online = [p.clone() for p in model.encoder.parameters()]
    target = [p.clone() for p in model.target_encoder.parameters()]
    model.momentum_update(0.9)
    for o, t, new in zip(online, target, model.target_encoder.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * t + 0.1 * o)
    # the online network is untouched by the update
    for o, p in zip(online, model.encoder.parameters(), strict=True):
        assert torch.equal(o, p)


def test_after_step_follows_cosine_tau_schedule():
    model = BYOL(ENC, base_momentum=0.99, **HEADS)
    assert abs(model.after_step(0, 10)["tau"] - 0.99) < 1e-12
    assert model.after_step(10, 10)["tau"] == 1.0


def test_gradients_reach_only_the_online_branch():
    torch.manual_seed(0)
    model = BYOL(ENC, **HEADS).train()
    batch = {"view1": torch.randn(4, 3, 32, 64), "view2": torch.randn(4, 3, 32, 64)}
    model(batch)["loss"].backward()
    for name, p in model.named_parameters():
        if name.startswith("target_"):
            assert p.grad is None and not p.requires_grad, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
