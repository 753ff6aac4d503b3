"""Detection / instance-segmentation readout with detectron2 — its tools/train_net.py, plus
MODEL.FLOWSSL, flowssl dataset registration and a results JSON for ``flowssl tables``.

    flowssl convert work_dirs/flowe/iter_0060000.pth --to detectron2 -o flowe.pkl
    python tools/d2_train_net.py --config-file configs/d2/faster_rcnn_flowssl_R50_C4_bdd100k_frozen.yaml \
        --num-gpus 8 MODEL.WEIGHTS flowe.pkl OUTPUT_DIR work_dirs/bdd_c4
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(args) -> dict:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.utils import comm

    from d2_plugin.train import Trainer, evaluate, setup, write_results

    cfg = setup(args.config_file, args.opts, args.data_root, args.synthetic_root, args)
    if args.eval_only:
        return evaluate(cfg)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    results = Trainer.test(cfg, trainer.model)
    if comm.is_main_process():
        write_results(cfg, results)
        DetectionCheckpointer(trainer.model, save_dir=cfg.OUTPUT_DIR)
    return results


if __name__ == "__main__":
    try:
        from detectron2.engine import default_argument_parser, launch
    except ImportError:
        sys.exit("d2_train_net: detectron2 is not installed; install it from its source (see README, 'detectron2')")
    parser = default_argument_parser()
    parser.add_argument("--data-root", default=os.environ.get("DETECTRON2_DATASETS"),
                        help="dataset root (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--synthetic-root", help="the synthetic Cityscapes-layout folder (flowssl demo writes one)")
    args = parser.parse_args()
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except FileNotFoundError as exc:
        sys.exit(f"d2_train_net: error: {exc}")
