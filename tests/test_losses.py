import math

import torch

from pretrain.losses import byol_loss, normalized_squared_distance


def test_byol_loss_matches_eq1_on_hand_made_vectors():
    # ‖p̃ − z̃‖²: orthogonal → 2, parallel (any scale) → 0, 45° → 2 − √2, opposite → 4.
    p = torch.tensor([[1.0, 0.0], [3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    z = torch.tensor([[0.0, 1.0], [6.0, 8.0], [1.0, 1.0], [0.0, -5.0]])
    per_sample = normalized_squared_distance(p, z)
    expected = torch.tensor([2.0, 0.0, 2 - math.sqrt(2), 4.0])
    torch.testing.assert_close(per_sample, expected)
    torch.testing.assert_close(byol_loss(p, z), expected.mean())


def test_byol_loss_flattens_1x1_maps_and_stops_target_gradient():
    p = torch.randn(3, 8, 1, 1, requires_grad=True)
    z = torch.randn(3, 8, 1, 1, requires_grad=True)
    loss = byol_loss(p, z)
    loss.backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None
    cos = torch.nn.functional.cosine_similarity(p.flatten(1), z.flatten(1))
    torch.testing.assert_close(loss, (2 - 2 * cos).mean())
