"""What a synthetic world lets a stride-8 readout show, measured before any method runs (issue 23).

On the readout split of ``configs/bench/tiny.py`` (``write_cityscapes_layout(seed=0)``: 16 train
videos, 4 val videos × frames 0, 5, 10, 15 at 128×256), for each world:

* the **label ceiling**: one-hot ground-truth labels at stride 8 (each 8×8 cell's majority label),
  upsampled bilinearly, argmax, mIoU on val — computed directly; with the cells' label distributions
  instead of one-hot; and through the converged linear probe and kNN readouts
  (``pretrain.probe.label_ceiling``) where that module is present;
* **property (a)**: per-pixel colour classifiers fitted on all readout-train pixels, scored on val —
  multinomial logistic regression on RGB fitted to convergence (L-BFGS), plain (its mIoU against the
  prior, background everywhere) and class-balanced (its balanced accuracy against chance, 1/6), and the
  Bayes classifier of 16³-bin colour histograms (the best any per-pixel colour rule can do, up to the
  binning);
* frame statistics: visible objects per frame and the foreground fraction.

    python benchmarks/world_properties.py                 # v2 ("crowded") and v3
    python benchmarks/world_properties.py --worlds v3 coloured

It reports; it never fails. The figures go into the world's module docstring.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.data.synthetic import CLASSES, make_video, video_seed  # noqa: E402

K = len(CLASSES)


def readout_frames(world: str, split: str, videos: int, frames: int = 4, step: int = 5
                   ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Images [N,3,H,W], labels [N,H,W] and visible objects per frame, as write_cityscapes_layout renders them."""
    images, labels, visible = [], [], []
    for v in range(videos):
        video = make_video(video_seed(0, split, v), 128, 256, world)
        for f in range(frames):
            out = video.render(f * step)
            images.append(out["image"])
            labels.append(out["semantic"])
            visible.append(len(torch.unique(out["surface"][out["surface"] > 0])))
    return torch.stack(images), torch.stack(labels), visible


def miou(pred: torch.Tensor, label: torch.Tensor) -> tuple[float, list[float]]:
    cm = torch.bincount(label.reshape(-1) * K + pred.reshape(-1), minlength=K * K).reshape(K, K).double()
    iou = cm.diag() / (cm.sum(0) + cm.sum(1) - cm.diag()).clamp(min=1)
    return 100 * float(iou.mean()), [round(100 * float(x), 1) for x in iou]


def direct_ceiling(labels: torch.Tensor, soft: bool = False) -> tuple[float, list[float]]:
    """Cells' majority label (one-hot) or label distribution → bilinear upsampling → argmax → mIoU."""
    cells = F.avg_pool2d(F.one_hot(labels, K).permute(0, 3, 1, 2).float(), 8)
    if not soft:
        cells = F.one_hot(cells.argmax(1), K).permute(0, 3, 1, 2).float()
    up = F.interpolate(cells, labels.shape[-2:], mode="bilinear", align_corners=False)
    return miou(up.argmax(1), labels)


def colour_classifiers(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor
                       ) -> dict[str, float]:
    x = x_train.permute(0, 2, 3, 1).reshape(-1, 3).double()
    xv = x_val.permute(0, 2, 3, 1).reshape(-1, 3).double()
    y, yv = y_train.reshape(-1), y_val.reshape(-1)
    mu, sd = x.mean(0), x.std(0)
    x, xv = (x - mu) / sd, (xv - mu) / sd

    def balanced_accuracy(pred: torch.Tensor) -> float:
        return float(np.mean([(pred[yv == c] == c).double().mean().item() for c in range(K) if (yv == c).any()]))

    def logistic(weight: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        """Converged (class-weighted) RGB logistic regression: the probe's own fit, with one-hot targets
        scaled by the class weight (the weighted cross-entropy's minimiser) and no L2."""
        from pretrain.probe import fit_softmax_regression

        targets = F.one_hot(y, K).double() * (weight[y, None] if weight is not None else 1.0)
        fit = fit_softmax_regression(x.float(), targets.float(), l2=0.0, max_iter=300, tol=1e-7)
        return (xv.float() @ fit["weight"].T + fit["bias"]).argmax(1), fit["iterations"]

    plain, it_plain = logistic(None)
    counts = torch.bincount(y, minlength=K).double().clamp(min=1)
    balanced, it_bal = logistic((1 / counts) / (1 / counts).sum() * K)
    bins = 16

    def q(t: torch.Tensor) -> torch.Tensor:
        b = (t.clamp(0, 0.9999) * bins).long()
        return ((b[:, 0] * bins + b[:, 1]) * bins + b[:, 2]).reshape(-1)

    hist = torch.zeros(K, bins**3, dtype=torch.float64)
    hist.index_put_((y, q(x_train)), torch.ones(len(y), dtype=torch.float64), accumulate=True)
    likelihood = (hist + 1) / (hist + 1).sum(1, keepdim=True)
    bayes_balanced = likelihood.argmax(0)[q(x_val)]
    bayes = (likelihood * hist.sum(1, keepdim=True)).argmax(0)[q(x_val)]
    return {
        "prior (all background) mIoU": miou(torch.zeros_like(yv), yv)[0],
        "RGB logistic regression mIoU": miou(plain, yv)[0], "(L-BFGS iterations)": it_plain,
        "RGB logistic regression, class-balanced: balanced accuracy": balanced_accuracy(balanced),
        "(L-BFGS iterations, balanced)": it_bal,
        "colour-histogram Bayes mIoU": miou(bayes, yv)[0],
        "colour-histogram Bayes, equal priors: balanced accuracy": balanced_accuracy(bayes_balanced),
        "chance balanced accuracy": 1 / K,
    }


def probe_ceilings(train: torch.Tensor, val: torch.Tensor) -> dict[str, float]:
    try:
        from pretrain.probe import label_ceiling
    except ImportError:
        return {}
    return {f"label ceiling through {r}": label_ceiling(train, val, K, readout=r).miou for r in ("linear_probe", "knn")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worlds", nargs="+", default=["crowded", "v3"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    for world in args.worlds:
        x_train, y_train, _ = readout_frames(world, "train", 16)
        x_val, y_val, visible = readout_frames(world, "val", 4)
        print(f"== world {world}")
        print(f"visible objects per frame {np.mean(visible):.1f} ({min(visible)}–{max(visible)}), "
              f"foreground {100 * float((y_val > 0).float().mean()):.1f} % of val pixels")
        for name, soft in (("one-hot cells", False), ("cell distributions", True)):
            m, per = direct_ceiling(y_val, soft)
            print(f"label ceiling, {name}: {m:.1f} mIoU  per class {per}")
        for name, value in probe_ceilings(y_train, y_val).items():
            print(f"{name}: {value:.1f} mIoU")
        for name, value in colour_classifiers(x_train, y_train, x_val, y_val).items():
            print(f"{name}: {value}" if isinstance(value, int) else f"{name}: {value:.3f}" if value < 1
                  else f"{name}: {value:.1f}")


if __name__ == "__main__":
    main()
