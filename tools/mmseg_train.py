"""Train a segmentation readout — MMSegmentation's tools/train.py, plus ``--checkpoint``.

    python tools/mmseg_train.py configs/mmseg/deeplabv1_flowssl-r50-frozen_4xb2-40k_cityscapes-512x1024.py \
        --checkpoint work_dirs/flowe/iter_0060000.pth --work-dir work_dirs/readout
    torchrun --nproc_per_node=4 tools/mmseg_train.py CONFIG --launcher pytorch --checkpoint CKPT
    python tools/mmseg_train.py CONFIG --checkpoint CKPT --label-fraction 0.1 --label-seed 0   # FlowE Table 6

``--label-fraction F`` trains on a deterministic share F of the training images (chosen by
``--label-seed``; listed in WORK_DIR/label_subset.txt); the evaluation set is always complete.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmengine.config import DictAction  # noqa: E402

from mmseg_plugin.labels import LabelIdError  # noqa: E402
from mmseg_plugin.runner import load_cfg, run_train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train a segmentor (flowssl readout)")
    p.add_argument("config")
    p.add_argument("--work-dir")
    p.add_argument("--checkpoint", help="flowssl pretraining checkpoint (or a converted mmseg file) for the backbone")
    p.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in the work dir")
    p.add_argument("--label-fraction", type=float, default=1.0,
                   help="train on this share of the labelled images, in (0, 1] (FlowE Table 6: 0.01, 0.1, 1)")
    p.add_argument("--label-seed", type=int, default=0, help="which label subset (same seed, same files)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction)
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    try:
        cfg = load_cfg(args.config, args.work_dir, args.checkpoint, args.cfg_options, args.launcher,
                       label_fraction=args.label_fraction, label_seed=args.label_seed)
    except (FileNotFoundError, ValueError) as exc:
        print(f"mmseg_train: error: {exc}", file=sys.stderr)
        return 2
    try:
        run_train(cfg, resume=args.resume)
    except LabelIdError as exc:  # one line naming the label file, not a traceback
        print(f"mmseg_train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
