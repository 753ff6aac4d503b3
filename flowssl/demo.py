"""``flowssl demo``: the main job end to end on a fresh machine, offline, on CPU."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pretrain.api import Trainer, load_config
from pretrain.config import CONFIG_DIR
from pretrain.data.synthetic import write_cityscapes_layout

_SUFFIX = "_r14_synthetic_demo.py"
# every method with a synthetic demo config; ImageNet weights cannot be made offline, so that entry
# point uses the R50 config and says how to get the weights.
DEMO_CONFIGS = {p.name.removesuffix(_SUFFIX): p for p in sorted((CONFIG_DIR / "pretrain").glob(f"*{_SUFFIX}"))}
DEMO_CONFIGS["imagenet_supervised"] = CONFIG_DIR / "pretrain" / "imagenet_supervised_r50.py"


def demo_picture(work_dir: Path, data_root: Path, seed: int = 0, methods: tuple[str, ...] = ("flowe", "byol"),
                 readout: str = "linear_probe") -> Path | None:
    """One picture of what the table measured: the first val frame and its labels, the ``methods``'
    stride-8 features in ONE PCA basis fitted across them (same colour, same direction), and their
    ``readout`` predictions, side by side. None when the run has no such readout for them."""
    import torch.nn.functional as F

    from pretrain.fileio import safe_torch_load
    from pretrain.probe import read_cityscapes_split
    from pretrain.readout import SYNTHETIC_PALETTE

    from .bench import PREDICTION_FILE
    from .show import compare_embeddings, label_colours, write_panel

    feats, preds = {}, {}
    for m in methods:
        cache = work_dir / "features" / m / f"seed{seed}" / "val.pt"
        pred = work_dir / "results" / m / "synthetic" / readout / f"seed{seed}" / PREDICTION_FILE
        if not (cache.is_file() and pred.is_file()):
            return None
        feats[m] = safe_torch_load(cache, what="feature cache")["features"][0].float()
        preds[m] = safe_torch_load(pred, what="prediction")
    images, labels, _ = read_cityscapes_split(data_root, "val")
    frame, size = images[0].float() / 255, tuple(images.shape[-2:])
    tiles = {"val frame": frame, "labels": label_colours(labels[0], SYNTHETIC_PALETTE)}
    for m, pca in compare_embeddings(feats).items():
        tiles[f"{m} features (shared PCA)"] = F.interpolate(pca[None], size=size, mode="nearest")[0]
    tiles.update({f"{m} {readout}": label_colours(preds[m], SYNTHETIC_PALETTE) for m in methods})
    return write_panel(tiles, work_dir / "demo.png", columns=2)


def run_table_demo(work_dir: Path, plan: str | Path | None = None) -> str:
    """The default demo: the tiny benchmark for one seed — every method of ``configs/bench/tiny.py``
    pretrained on synthetic world v3 with one budget, read out frozen on held-out videos by the plan's
    readouts (the converged linear probe, kNN, DeepLab v1 through MMSegmentation)."""
    from .bench import PRESETS, Bench

    bench = Bench(plan or PRESETS["tiny"], work_dir, seeds=[0])
    methods = list(bench.plan.methods)
    iters = int(bench.plan.get("pretrain_options", {}).get("max_iters", 0))
    print(f"pretraining {len(methods)} methods ({', '.join(methods)}) on the synthetic street video and reading "
          f"each out (work dir {work_dir})")
    t0 = time.perf_counter()
    table = bench.run()
    print(table, end="")
    data_root = bench.synthetic_root()
    picture = demo_picture(work_dir, data_root) if data_root is not None else None
    if picture is not None:
        print(f"\npicture: {picture} (a val frame, its labels, FlowE's and BYOL's features in one PCA basis, "
              "their linear-probe predictions)")
    print(f"\nwall time: {(time.perf_counter() - t0) / 60:.1f} min\n"
          f"checkpoints:      {work_dir / 'pretrain'}/<method>/seed0/iter_*.pth\n"
          f"readout results:  {work_dir / 'results'}/<method>/synthetic/<readout>/seed0/results.json\n"
          f"full logs:        {work_dir / 'logs'}/ (mmengine/detectron2 output of every readout)\n"
          "next:\n"
          f"  flowssl show embeddings {work_dir}/pretrain/flowe/seed0/iter_{iters:07d}.pth IMAGE.png --out emb.png\n"
          "  flowssl bench --preset tiny            # all 3 seeds, mean ± std\n"
          "  flowssl bench configs/bench/paper_bdd100k.py --launcher slurm --dry-run   # the paper's jobs, for SLURM")
    return table


def run_demo(work_dir: Path, iters: int | None = None, method: str = "flowe") -> Path:
    if method not in DEMO_CONFIGS:
        raise KeyError(f"unknown demo method '{method}'; choose one of {sorted(DEMO_CONFIGS)}")
    data_root = work_dir / "data" / "synthetic_cityscapes"
    if not data_root.exists():
        print(f"[1/2] writing the synthetic video as a Cityscapes-layout dataset to {data_root}")
        write_cityscapes_layout(data_root, seed=0)
    else:
        print(f"[1/2] synthetic dataset already at {data_root}")
    options = {"max_iters": iters} if iters else {}
    cfg = load_config(DEMO_CONFIGS[method], options)
    run_dir = work_dir / method
    print(f"[2/2] pretraining {method} ({cfg.model.encoder.arch}, {cfg.max_iters} iterations) in {run_dir}")
    ckpt = Trainer(cfg, run_dir, resume="auto").train()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if rows:
        print(f"loss {rows[0]['loss']:.4f} (iteration {rows[0]['iteration']}) → "
              f"{rows[-1]['loss']:.4f} (iteration {rows[-1]['iteration']})")
    print(f"checkpoint: {ckpt}")
    print(f"synthetic readout dataset: {data_root}")
    return ckpt
