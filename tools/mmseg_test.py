"""Evaluate a trained segmentation readout — MMSegmentation's tools/test.py; writes mIoU and
per-class IoU to a JSON (``--out``, default WORK_DIR/results.json) that ``flowssl tables`` reads."""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmengine.config import DictAction  # noqa: E402

from mmseg_plugin.labels import LabelIdError  # noqa: E402
from mmseg_plugin.runner import load_cfg, run_test  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Test a segmentor (flowssl readout)")
    p.add_argument("config")
    p.add_argument("model_checkpoint", help="the readout checkpoint written by mmseg_train.py")
    p.add_argument("--work-dir")
    p.add_argument("--out", help="result JSON (default: WORK_DIR/results.json)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction)
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    try:
        cfg = load_cfg(args.config, args.work_dir, None, args.cfg_options, args.launcher)
        result = run_test(cfg, args.model_checkpoint, args.out)
    except (FileNotFoundError, LabelIdError) as exc:
        print(f"mmseg_test: error: {exc}", file=sys.stderr)
        return 2
    print({k: v if v is None else round(v, 2) for k, v in result["metrics"].items()})  # None: class absent
    return 0


if __name__ == "__main__":
    sys.exit(main())
