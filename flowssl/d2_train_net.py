"""Detection / instance-segmentation readout with detectron2 — its tools/train_net.py, plus
MODEL.FLOWSSL, flowssl dataset registration, label fractions and a results JSON for ``flowssl tables``.

    flowssl convert work_dirs/flowe/iter_0060000.pth --to detectron2 -o flowe.pkl
    python tools/d2_train_net.py --config-file configs/d2/faster_rcnn_flowssl_R50_C4_bdd100k_frozen.yaml \
        --num-gpus 8 --data-root /data MODEL.WEIGHTS flowe.pkl OUTPUT_DIR work_dirs/bdd_c4

An app (it imports the adapter): ``tools/d2_train_net.py`` and ``python -m flowssl.d2_train_net`` (what
``flowssl bench`` runs, so it works from an installed wheel) both end here.
"""

import argparse
import os
import sys


def argument_parser() -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` plus the dataset roots."""
    from detectron2.engine import default_argument_parser

    parser = default_argument_parser()
    parser.add_argument("--data-root", default=os.environ.get("DETECTRON2_DATASETS"),
                        help="dataset root holding bdd100k/, cityscapes/, VOC2007/ + VOC2012/ (or VOCdevkit/) and "
                             "synthetic_cityscapes/ (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--synthetic-root", help="the synthetic Cityscapes-layout folder (flowssl demo writes one)")
    return parser


def main(args: argparse.Namespace) -> dict:
    from d2_plugin.train import run

    return run(args)


def cli() -> None:
    """Parse, launch one process per GPU, and turn a bad input into one line with exit 2."""
    try:
        from detectron2.engine import launch
    except ImportError:
        print("d2_train_net: error: detectron2 is not installed; install it from its source (see README, 'detectron2')",
              file=sys.stderr)
        sys.exit(2)
    from pretrain.config import ConfigError
    from pretrain.fileio import CheckpointError

    args = argument_parser().parse_args()
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except (FileNotFoundError, ConfigError, CheckpointError) as exc:  # a bad input: one line, exit 2
        print(f"d2_train_net: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
