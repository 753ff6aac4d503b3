"""Every loss against its equation, written out on small hand-made inputs (the cross-pixel loss, eq. 5
and the flow normalisation: tests/test_objectives.py and tests/test_flowe.py)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pretrain.losses import (
    affine_motion_loss,
    byol_loss,
    cell_cross_entropy_loss,
    equivariance_loss,
    flow_bin_classification_loss,
    histogram_entropy_loss,
    normalized_squared_distance,
)


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


def _cos_distance(a: list[float], b: list[float]) -> float:
    """2 − 2·cos(a, b), written out."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return 2 - 2 * dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.mark.parametrize("resolution,chunk_rows", [("feature", 32), ("image", 0), ("image", 2)])
def test_equivariance_loss_is_eq5_after_the_warp_by_t(resolution, chunk_rows):
    """Eq. 4–5 by hand: identity view affines and a flow of one pixel to the right, so T(q) = q + (1, 0)
    and p at q meets z at q + (1, 0); the last column (its partner leaves the view) and a pixel the flow
    marks invalid drop out. Maps at the view's size, so the feature grid, the whole upsampled maps
    and the banded loss all compute this same sum."""
    torch.manual_seed(0)
    h, w = 3, 4
    p, z = torch.randn(1, 2, h, w), torch.randn(1, 2, h, w)
    eye = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    flow = torch.zeros(1, 2, h, w)
    flow[:, 0] = 1.0
    valid = torch.ones(1, h, w, dtype=torch.bool)
    valid[0, 1, 0] = False
    terms = [_cos_distance(p[0, :, y, x].tolist(), z[0, :, y, x + 1].tolist())
             for y in range(h) for x in range(w - 1) if (y, x) != (1, 0)]
    loss, frac = equivariance_loss(p, z, eye, eye, flow, valid, (h, w), resolution, chunk_rows)
    torch.testing.assert_close(loss, torch.tensor(sum(terms) / len(terms)), rtol=1e-5, atol=1e-6)
    assert frac == len(terms) / (h * w)


def test_flow_bin_classification_loss_is_the_cross_entropy_of_the_bins():
    """Per axis, the class of f is ⌊(clamp(f, −1, 1) + 1)/2 · K⌋ (K − 1 at f = 1); the loss is the mean
    softmax cross-entropy over pixels for x plus the same for y."""
    torch.manual_seed(0)
    bins, flow = 4, torch.tensor([[[-1.5, 1.0], [-0.5, 0.49], [0.0, 0.51], [0.999, -1.0]]])  # [B=1, N=4, 2]
    logits = torch.randn(1, 2 * bins, 4)
    by_hand = 0.0
    for axis in range(2):
        for n in range(4):
            f = min(max(flow[0, n, axis].item(), -1.0), 1.0)
            k = min(math.floor((f + 1) / 2 * bins), bins - 1)
            row = logits[0, axis * bins:(axis + 1) * bins, n].tolist()
            by_hand += (math.log(sum(math.exp(v) for v in row)) - row[k]) / 4
    torch.testing.assert_close(flow_bin_classification_loss(logits, flow, bins), torch.tensor(by_hand))


@pytest.mark.parametrize("weighted", [False, True])
def test_cell_cross_entropy_is_each_pixels_cross_entropy_against_its_cells_logits(weighted):
    """The oracle's loss written out: stride 2, pixel (y, x) reads the logits of cell (y // 2, x // 2);
    the mean of w(label)·(log Σ_k e^{z_k} − z_label) over labelled pixels, divided by Σ w(label)."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 2, 3)
    labels = torch.randint(0, 3, (2, 4, 6))
    labels[0, 1, 2] = labels[1, 3, 5] = 255
    weight = torch.tensor([0.2, 1.0, 3.0]) if weighted else torch.ones(3)
    total, norm = 0.0, 0.0
    for b in range(2):
        for y in range(4):
            for x in range(6):
                c = int(labels[b, y, x])
                if c == 255:
                    continue
                z = logits[b, :, y // 2, x // 2].tolist()
                total += weight[c].item() * (math.log(sum(math.exp(v) for v in z)) - z[c])
                norm += weight[c].item()
    loss = cell_cross_entropy_loss(logits, labels, weight if weighted else None)
    torch.testing.assert_close(loss, torch.tensor(total / norm))
    if not weighted:  # at stride 1 it is F.cross_entropy
        full = torch.randn(2, 3, 4, 6)
        expected = F.cross_entropy(full, labels, ignore_index=255)
        torch.testing.assert_close(cell_cross_entropy_loss(full, labels), expected)
    with pytest.raises(ValueError, match="not a whole stride"):
        cell_cross_entropy_loss(logits, labels[:, :3])
    with pytest.raises(ValueError, match="class ids 0..2"):
        cell_cross_entropy_loss(logits, torch.full((2, 4, 6), 3))


def test_affine_motion_loss_is_the_charbonnier_residual_of_per_region_weighted_fits():
    """S3-CNN's affine loss written out: for each soft region l, A_l = argmin Σ_u m_l(u)·v(u)·‖A x_u − f(u)‖²
    (x_u = (x, y, 1) in pixels: the fit does not depend on how x, y are scaled), the flow rebuilt as
    Σ_l m_l(u)·A_l x_u, and the mean over valid pixels of √(‖rebuilt − f‖² + ε²) − ε."""
    torch.manual_seed(0)
    h, w, regions, eps = 5, 7, 2, 1e-3
    masks = torch.randn(1, regions, h, w).softmax(1)
    flow = torch.randn(1, 2, h, w) * 3
    valid = torch.rand(1, h, w) > 0.2
    m, f = masks[0].double().flatten(1).numpy(), flow[0].double().flatten(1).T.numpy()  # [L,P], [P,2]
    v = valid[0].flatten().double().numpy()
    ys, xs = np.mgrid[0:h, 0:w]
    x = np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)], 1)  # [P,3]
    rebuilt = np.zeros_like(f)
    for lab in range(regions):
        sw = np.sqrt(m[lab] * v)[:, None]
        a = np.linalg.lstsq(sw * x, sw * f, rcond=None)[0]  # [3,2]
        rebuilt += m[lab][:, None] * (x @ a)
    rho = np.sqrt(((rebuilt - f) ** 2).sum(1) + eps**2) - eps
    by_hand = (rho * v).sum() / v.sum()
    got = affine_motion_loss(masks, flow, valid, ridge=0.0, eps=eps)
    torch.testing.assert_close(got, torch.tensor(by_hand, dtype=torch.float32), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("max_magnitude", [4.0, None])  # a fixed range, or the 0.99 quantile of valid magnitudes
def test_histogram_entropy_loss_is_the_mass_weighted_entropy_of_soft_histograms(max_magnitude):
    """S3-CNN's entropy loss written out: magnitudes clipped to [0, top] fall softly into K Gaussian bins
    (centres k·top/(K − 1), width top/(K − 1)); region l's histogram sums m_l(u)·v(u) over pixels;
    the loss is Σ_l (mass_l / Σ mass)·H(histogram_l)."""
    torch.manual_seed(0)
    h, w, regions, bins = 4, 6, 2, 5
    masks = torch.randn(1, regions, h, w).softmax(1)
    flow = torch.randn(1, 2, h, w) * 3
    valid = torch.rand(1, h, w) > 0.25
    mag = flow[0].double().norm(dim=0).flatten().numpy()
    v = valid[0].flatten().numpy()
    top = max_magnitude if max_magnitude is not None else float(np.quantile(mag[v], 0.99))
    centres, width = np.arange(bins) * top / (bins - 1), top / (bins - 1)
    soft = np.exp(-0.5 * ((np.minimum(mag, top)[:, None] - centres) / width) ** 2)
    soft /= soft.sum(1, keepdims=True)
    hist = (masks[0].double().flatten(1).numpy() * v) @ soft  # [L,K]
    mass = hist.sum(1)
    prob = hist / mass[:, None]
    entropy = -(prob * np.log(prob)).sum(1)
    by_hand = (entropy * mass / mass.sum()).sum()
    got = histogram_entropy_loss(masks, flow, valid, bins, max_magnitude)
    torch.testing.assert_close(got, torch.tensor(by_hand, dtype=torch.float32), rtol=1e-5, atol=1e-6)
