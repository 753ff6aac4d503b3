"""Readout training step, frozen vs fine-tuned backbone, in one run (printed ratios, never asserts).

    python benchmarks/readout_step.py --framework mmseg [--arch resnet50] [--size 256 512] [--device cuda]
    python benchmarks/readout_step.py --framework d2      (needs detectron2)

mmseg: DeepLab v1 (one 1×1 conv) on the flowssl OS8 encoder. d2: Faster R-CNN C4 with the flowssl
backbone. Target: the frozen step costs ≤ 0.5× the fine-tuned one in memory (no activations are
kept, nothing is differentiated through the backbone), and less time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_mb, run_child, time_steps  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def mmseg_step(frozen: bool, arch: str, size: tuple[int, int], device: torch.device):
    from mmengine.config import Config
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules

    import mmseg_plugin  # noqa: F401

    register_all_modules()
    cfg = Config.fromfile(str(REPO / "configs/mmseg/deeplabv1_flowssl-r50-frozen_4xb2-40k_cityscapes-512x1024.py"))
    cfg.model.backbone.update(arch=arch, frozen=frozen)
    model = MODELS.build(cfg.model).to(device).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    b, (h, w) = 2, size
    x = torch.randn(b, 3, h, w, device=device)
    samples = []
    for _ in range(b):
        s = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 19, (1, h, w), device=device)))
        s.set_metainfo({"img_shape": (h, w), "pad_shape": (h, w)})
        samples.append(s)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        losses = model.loss(x, samples)
        sum(v for k, v in losses.items() if "loss" in k).backward()
        opt.step()

    return step


def d2_step(frozen: bool, arch: str, size: tuple[int, int], device: torch.device):
    from d2_plugin.bench import faster_rcnn_c4_step

    return faster_rcnn_c4_step(frozen, arch, size, device)


def measure(framework: str, frozen: bool, arch: str, size: tuple[int, int], steps: int, device: str) -> dict:
    dev = torch.device(device)
    torch.manual_seed(0)
    step = (mmseg_step if framework == "mmseg" else d2_step)(frozen, arch, size, dev)
    base = peak_mb(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev) / 2**20
    seconds = time_steps(step, steps, dev)
    return {"step_s": seconds, "peak_mb": peak_mb(dev) - base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--framework", choices=("mmseg", "d2"), default="mmseg")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, nargs=2, default=(256, 512))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--only", choices=("frozen", "finetune"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        print(json.dumps(measure(args.framework, args.only == "frozen", args.arch, tuple(args.size), args.steps,
                                 args.device)))
        return
    common = ["--framework", args.framework, "--device", args.device, "--arch", args.arch, "--size",
              *map(str, args.size), "--steps", str(args.steps)]
    rows = {mode: run_child(__file__, [*common, "--only", mode]) for mode in ("frozen", "finetune")}
    head = "DeepLab v1" if args.framework == "mmseg" else "Faster R-CNN C4"
    print(f"{head} readout step ({args.framework}), {args.arch}, batch 2 of {args.size[0]}×{args.size[1]}, "
          f"{args.device}")
    print(f"{'backbone':<12}{'step (s)':>10}{'peak (MiB)':>12}")
    for mode, r in rows.items():
        print(f"{mode:<12}{r['step_s']:>10.3f}{r['peak_mb']:>12.0f}")
    mem = rows["frozen"]["peak_mb"] / max(rows["finetune"]["peak_mb"], 1e-6)
    print(f"memory ratio frozen/fine-tuned: {mem:.2f}  (target ≤ 0.50: {'met' if mem <= 0.5 else 'MISSED'})")
    print(f"time ratio frozen/fine-tuned:   {rows['frozen']['step_s'] / rows['finetune']['step_s']:.2f}")


if __name__ == "__main__":
    main()
