"""What a feature readout's mIoU is made of, per checkpoint of a finished bench run (issue 23's study).

For every ``<work>/features/<method>/seed<k>/`` the bench cached (frozen stride-8 features of the
synthetic readout frames), with the same standardisation and converged L-BFGS probe as the bench:

* **foreground/background probe**: the probe fitted to binary labels (background vs any object
  class) — objectness without class; its foreground IoU;
* **small vs large instances**: the multi-class probe's prediction, and per val instance the
  fraction of its visible pixels predicted as its class (``pretrain.probe.instance_recall``),
  averaged over the instances below and above the median visible area of the val instances (a
  split fixed by the labels alone, before any method is read).

The first row is the label ceiling (one-hot labels at stride 8 as the features). It reports; it never
fails.

    python benchmarks/readout_diagnostics.py work_dirs/demo          # a bench or demo work dir
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain import probe  # noqa: E402
from pretrain.fileio import safe_torch_load  # noqa: E402
from pretrain.readout import SYNTHETIC_CLASSES  # noqa: E402

K = len(SYNTHETIC_CLASSES)


def diagnose(train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor,
             val_instances: torch.Tensor, small_below: float) -> dict[str, float]:
    """Binary-probe foreground IoU and the multi-class probe's mean instance recall, small vs large."""
    binary = probe.read_out("linear_probe", train, probe.foreground_labels(train_labels), val,
                            probe.foreground_labels(val_labels), 2)
    multi = probe.read_out("linear_probe", train, train_labels, val, val_labels, K)
    rows = probe.instance_recall(multi.predictions, val_instances)
    small = rows[:, 0] < small_below
    return {"probe mIoU": multi.miou, "fg/bg fg IoU": binary.iou[1], "fg/bg mIoU": binary.miou,
            "recall small": 100 * float(rows[small, 2].mean()), "recall large": 100 * float(rows[~small, 2].mean()),
            "instances small/large": f"{int(small.sum())}/{int((~small).sum())}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, help="a finished `flowssl bench`/`flowssl demo` work dir")
    ap.add_argument("--data", type=Path, help="its synthetic readout data (default: the one under <work>/data)")
    args = ap.parse_args(argv)
    data = args.data or next(iter(sorted((args.work / "data").glob("synthetic_cityscapes*"))), None)
    if data is None:
        print(f"no synthetic readout data under {args.work / 'data'}; pass --data", file=sys.stderr)
        return 2
    (_, train_labels, _), (_, val_labels, val_files) = (probe.read_cityscapes_split(data, s) for s in ("train", "val"))
    val_instances = probe.read_cityscapes_instances(val_files)
    areas = probe.instance_recall(val_labels, val_instances)[:, 0]  # labels as predictions: areas only
    small_below = float(areas.median())
    print(f"{data}: {len(areas)} val instances, median visible area {small_below:.0f} px "
          f"({100 * small_below / val_labels[0].numel():.1f} % of a frame)")
    results = {"ceiling (one-hot labels)": diagnose(probe.label_features(train_labels, K), train_labels,
                                                    probe.label_features(val_labels, K), val_labels,
                                                    val_instances, small_below)}
    for cache in sorted((args.work / "features").glob("*/seed*")):
        feats = {s: safe_torch_load(cache / f"{s}.pt", what="feature cache")["features"].float()
                 for s in ("train", "val")}
        results[f"{cache.parent.name} {cache.name}"] = diagnose(feats["train"], train_labels, feats["val"],
                                                               val_labels, val_instances, small_below)
    keys = list(next(iter(results.values())))
    print("| checkpoint | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(v if isinstance(v, str) else f"{v:.1f}" for v in row.values()) + " |")
    (args.work / "diagnostics.json").write_text(json.dumps({"small_below_px": small_below, "rows": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
