"""The ``flowssl`` command: ``flowssl pretrain CONFIG``, ``flowssl demo``."""

from __future__ import annotations

import argparse
import logging
import re
import sys
import traceback
from pathlib import Path

from mmengine.config import DictAction

from pretrain.config import ConfigError, resolve_config
from pretrain.fileio import CheckpointError, WriteError

# What a user can fix gets one line on stderr and exit code 2, not a traceback (``--debug`` shows it).
USER_ERRORS = (ConfigError, CheckpointError, FileNotFoundError, FileExistsError, PermissionError, KeyError,
               ValueError, WriteError)


def user_error_message(exc: BaseException) -> str | None:
    """The one line to print for an error a user can fix, or None for a bug (traceback).

    Covers the flowssl error types, bad data raised inside DataLoader workers (torch re-raises them
    in the main process with the worker's whole traceback as the message: we keep its last line),
    and a config key passed to a constructor that does not take it."""
    from pretrain.data.frames import BadDataError
    from pretrain.trainer import DivergenceError

    if isinstance(exc, TypeError):
        m = re.search(r"(\w+(?:\.__init__)?)\(\) got an unexpected keyword argument '(\w+)'", str(exc))
        if m is None:
            return None
        return (f"config key '{m[2]}' is not an option of {m[1].replace('.__init__', '')}; check the spelling in "
                "the config or --cfg-options")
    if not isinstance(exc, (*USER_ERRORS, BadDataError, DivergenceError)):
        return None
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    if "Original Traceback" in str(msg):  # raised in a DataLoader worker
        last = [line for line in str(msg).strip().splitlines() if line.strip()][-1]
        msg = last.split(": ", 1)[-1] if re.match(r"^[\w.]+(Error|Exception): ", last) else last
    return str(msg)


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain an encoder from a config")
    # optional only for argparse: '--resume CONFIG' hands the config to --resume (see pretrain_target)
    p.add_argument("config", nargs="?", help="config file (required; a path, or relative to configs/)")
    p.add_argument("--work-dir", help="output folder (default: work_dirs/<config name>)")
    p.add_argument("--resume", nargs="?", const="latest", default=False, metavar="{latest,auto}",
                   help="continue from the newest readable checkpoint in the work dir; '--resume auto' starts "
                        "fresh when there is none (for cluster jobs that are requeued blindly)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                   help="override config keys, e.g. max_iters=100 optimizer.lr=0.05")
    p.set_defaults(func=cmd_pretrain)


def pretrain_target(config: str | None, resume: str | bool) -> tuple[str, str | bool]:
    """(config, resume mode) of ``flowssl pretrain``. ``--resume`` takes an optional mode, so argparse
    hands it the next word: in ``--resume CONFIG`` that word is the config, and the mode is 'latest'."""
    from pretrain.trainer import RESUME_MODES

    if resume is not False and resume not in RESUME_MODES:
        if config is not None:
            raise ConfigError(f"--resume takes {' or '.join(RESUME_MODES)} (or nothing), got {resume!r}")
        config, resume = resume, "latest"
    if config is None:
        raise ConfigError("flowssl pretrain needs a CONFIG (a path, or relative to configs/)")
    return config, resume


def cmd_pretrain(args: argparse.Namespace) -> int:
    from pretrain.api import Trainer, load_config

    config, resume = pretrain_target(args.config, args.resume)
    cfg = load_config(config, args.cfg_options)
    work_dir = args.work_dir or str(Path("work_dirs") / Path(config).stem)
    trainer = Trainer(cfg, work_dir, resume=resume)
    final = trainer.train()
    if trainer.is_main:  # once, not once per rank
        print(f"checkpoint: {final}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="offline CPU demo: synthetic video → pretraining (a few minutes)")
    p.add_argument("--work-dir", default="work_dirs/demo")
    p.add_argument("--iters", type=int, default=None, help="pretraining iterations (default: the config's)")
    p.add_argument("--method", default=None,
                   help="pretrain only this objective (see configs/pretrain/*_r14_synthetic_demo.py); by default "
                        "the demo runs the tiny benchmark for one seed and prints the table")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.method is None and args.iters is None:
        from .demo import run_table_demo

        run_table_demo(Path(args.work_dir))
        return 0
    run_demo(Path(args.work_dir), iters=args.iters, method=args.method or "flowe")
    return 0


def _add_flow(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flow", help="optical flow tools")
    fsub = p.add_subparsers(dest="flow_command", required=True)
    pre = fsub.add_parser("precompute", help="fill a flow cache for a config's frame-pair dataset (resumable)")
    pre.add_argument("config", help="pretrain config whose data is a frame-pair dataset (a path, or relative to "
                                    "configs/)")
    pre.add_argument("--out", required=True,
                     help="cache folder (then set data.flow=dict(type='precomputed', root=...))")
    pre.add_argument("--source", default="dis", help="flow source: dis (default) or raft")
    pre.add_argument("--checkpoint", help="RAFT weights (local file)")
    pre.add_argument("--scale", type=float, default=64.0, help="fixed-point scale: 1/scale px precision")
    pre.add_argument("--device", default="cpu",
                     help="cpu, cuda (under torchrun/srun: each process its local rank's GPU) or cuda:N")
    pre.add_argument("--batch-size", type=int, default=4,
                     help="pairs per call of the flow source (RAFT on the device); shards of one cache must agree")
    pre.add_argument("--workers", type=int, default=2, help="threads reading frames and writing PNGs")
    pre.add_argument("--shard", help="compute shard I of N (0 <= I < N) of the pairs; default: the rank and world "
                                     "of torchrun/srun, times the SLURM job-array task, else one shard")
    pre.add_argument("--merge", action="store_true",
                     help="only write flow_cache.json from the shards' records (the last shard does it itself)")
    pre.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    pre.set_defaults(func=cmd_flow_precompute)
    _add_pair_arguments(fsub.add_parser("show", help="PNGs of flow, occlusion and warped-frame error for a frame pair"))


def _add_pair_arguments(p: argparse.ArgumentParser) -> None:
    """``flowssl flow show`` and ``flowssl show pair``: one command under two names."""
    p.add_argument("frame1")
    p.add_argument("frame2")
    p.add_argument("--out", required=True)
    p.add_argument("--source", default="dis")
    p.add_argument("--checkpoint")
    p.set_defaults(func=cmd_flow_show)


def _source_cfg(args: argparse.Namespace, config_flow: dict | None = None) -> dict:
    """``--source``, with the config's ``model.flow`` settings when it is the same kind (RAFT weights,
    iterations, occlusion α), so a cache holds the flow training would compute; ``--checkpoint`` wins."""
    cfg = {"type": args.source}
    if config_flow and config_flow.get("type") == args.source:
        cfg.update(config_flow)
    if args.checkpoint:
        cfg["checkpoint"] = args.checkpoint
    return cfg


def cmd_flow_precompute(args: argparse.Namespace) -> int:
    from pretrain.api import load_config
    from pretrain.dist import launch_ranks
    from pretrain.flow.sources import build_flow_source
    from pretrain.registry import DATASETS, build_from

    from .flow_tools import merge_shards, parse_shard, precompute_cache, shard_from_env

    cfg = load_config(args.config, args.cfg_options)
    data = dict(cfg.data)
    data["flow"] = None
    dataset = build_from(DATASETS, data, "dataset", seed=cfg.get("seed", 0))
    if not hasattr(dataset, "pairs"):
        raise ConfigError(f"data type '{data['type']}' has no fixed list of frame pairs to precompute "
                          "(use FrameFolderPairs or CityscapesSequencePairs)")
    keys = [dataset.pair_key(a, b) for a, b in dataset.pairs]
    if args.merge:
        merge_shards(Path(args.out), keys)
        print(f"flow cache {args.out}: merged {Path(args.out) / 'flow_cache.json'}")
        return 0
    index, count = parse_shard(args.shard) if args.shard else shard_from_env()
    device = args.device
    if device == "cuda" and count > 1:  # one GPU per process of torchrun/srun (a job array's task sees its own)
        device = f"cuda:{launch_ranks()[1]}"
    model_flow = (cfg.get("model") or {}).get("flow")
    source = build_flow_source(_source_cfg(args, dict(model_flow) if model_flow else None))
    counts = precompute_cache(dataset.pairs, keys, Path(args.out), source, args.scale, device,
                              shard=(index, count), batch_size=args.batch_size, workers=args.workers)
    which = f", shard {index}/{count}" if count > 1 else ""
    line = (f"flow cache {args.out}{which}: {counts['done']} computed, {counts['skipped']} already there, "
            f"{counts['unreadable']} unreadable")
    if count > 1:
        line += (f"; all {count} shards finished, wrote flow_cache.json" if counts["merged"] else
                 f"; {counts['finished_shards']} of {count} shards finished (the last one writes flow_cache.json)")
    print(line)
    return 0


def cmd_flow_show(args: argparse.Namespace) -> int:
    from pretrain.data.frames import load_rgb
    from pretrain.flow.sources import build_flow_source

    from .flow_tools import show_pair

    imgs = []
    for f in (args.frame1, args.frame2):
        if not Path(f).is_file():
            raise FileNotFoundError(f"frame {f} does not exist")
        imgs.append(load_rgb(Path(f)))  # truncated, corrupt or absurdly large: one line naming the file
    if imgs[0].shape != imgs[1].shape:
        raise ValueError(f"frames differ in size: {tuple(imgs[0].shape)} vs {tuple(imgs[1].shape)}")
    paths = show_pair(imgs[0], imgs[1], build_flow_source(_source_cfg(args)), Path(args.out))
    print("\n".join(str(p) for p in paths))
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert an encoder checkpoint for torchvision, detectron2 or mmseg")
    p.add_argument("src", help="flowssl checkpoint, torchvision state dict, or a MoCo/BYOL/SimCLR release")
    p.add_argument("--to", required=True, choices=("torchvision", "detectron2", "mmseg"))
    p.add_argument("-o", "--out", required=True, help="output file (.pkl for detectron2, .pth otherwise)")
    p.add_argument("--from", dest="source", default="auto",
                   choices=("auto", "flowssl", "torchvision", "byol", "simclr", "moco", "detectron2"))
    p.add_argument("--allow-missing", action="store_true", help="write even if trunk keys are missing")
    p.add_argument("--drop-heads", action="store_true", help="leave out keys outside the ResNet trunk")
    p.add_argument("--with-decoder", action="store_true",
                   help="--to mmseg: also export PooDLe's spatial decoder, to read out through it (the authors' "
                        "linear protocol; the readout config sets model.backbone.decoder)")
    p.add_argument("--force", action="store_true",
                   help="replace existing output files (OUT, OUT.json, the .yaml beside a .pkl); never the input")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    import json

    from d2_plugin.export import convert

    side = convert(args.src, args.to, args.out, source=args.source, allow_missing=args.allow_missing,
                   drop_heads=args.drop_heads, with_decoder=args.with_decoder, force=args.force)
    print(f"read {args.src}: {side['source_layout']} layout (prefix '{side['source_prefix']}'), {side['arch']}, "
          f"method {side['method']}, output stride {side['output_stride']}; {side['keys_in']} keys in, "
          f"{side['keys_out']} out, {side['dropped_keys']} dropped")
    if "detectron2_config" in side:
        print("detectron2 config for this encoder:\n" + json.dumps(side["detectron2_config"], indent=2))
    if side.get("decoder"):
        print(f"with PooDLe's spatial decoder {side['decoder']}: read out through it with "
              f"model.backbone.decoder=dict(channels={side['decoder']['channels']}, "
              f"hidden_factor={side['decoder']['hidden_factor']})")
    print(f"wrote {args.out} (sha256 {side['sha256'][:12]}…) and {args.out}.json")
    if side.get("detectron2_yaml"):
        print(f"wrote {side['detectron2_yaml']}: set its _BASE_ to a model-zoo config to train with detectron2's "
              "own tools/train_net.py (see README, 'Detection readout')")
    return 0


def _add_tables(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tables", help="readout results next to the FlowE paper's tables")
    p.add_argument("results", help="RESULTS/<method>/<dataset>/<readout>[/<seed>]/results.json tree")
    p.add_argument("--format", default="md", choices=("md", "latex", "csv"))
    p.set_defaults(func=cmd_tables)


def cmd_tables(args: argparse.Namespace) -> int:
    from .tables import render

    print(render(args.results, args.format), end="")
    return 0


def _add_show(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="pictures: flow of a pair, dense embeddings, readout predictions")
    ssub = p.add_subparsers(dest="show_command", required=True)
    _add_pair_arguments(ssub.add_parser("pair", help="frames, flow, occlusion and warped-frame error"))
    emb = ssub.add_parser("embeddings", help="encoder features projected to RGB (PCA or random)")
    emb.add_argument("checkpoint")
    emb.add_argument("image")
    emb.add_argument("--out", required=True)
    emb.add_argument("--projection", default="pca", choices=("pca", "random"))
    emb.add_argument("--stage", default="layer4", choices=("stem", "layer1", "layer2", "layer3", "layer4"))
    emb.set_defaults(func=lambda a: _print(__import__("flowssl.show", fromlist=["x"]).show_embeddings(
        a.checkpoint, a.image, a.out, a.projection, a.stage)))
    pred = ssub.add_parser("predictions", help="an mmseg readout's prediction over an image")
    pred.add_argument("config", help="mmseg readout config (a path, or relative to configs/)")
    pred.add_argument("readout_checkpoint")
    pred.add_argument("image")
    pred.add_argument("--out", required=True)
    pred.set_defaults(func=lambda a: _print(__import__("flowssl.show", fromlist=["x"]).show_predictions(
        resolve_config(a.config), a.readout_checkpoint, a.image, a.out)))


def _print(path: Path) -> int:
    print(path)
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a plan: checkpoints × readouts × datasets, then the tables")
    p.add_argument("plan", nargs="?", help="plan file (a path, or relative to configs/, e.g. bench/tiny.py)")
    p.add_argument("--preset", choices=("tiny",), help="tiny: the CPU reproduction on the synthetic video")
    p.add_argument("--work-dir", help="default: work_dirs/bench_<plan name>")
    p.add_argument("--seeds", type=int, nargs="+", help="override the plan's seeds")
    p.add_argument("--print-commands", action="store_true",
                   help="print the commands a cluster runs (multi-GPU torchrun, every conversion and readout, "
                        "absolute paths); --launcher slurm --dry-run shows them as sbatch scripts")
    _add_launcher_arguments(p)
    p.set_defaults(func=cmd_bench)


def _add_launcher_arguments(p: argparse.ArgumentParser) -> None:
    """``flowssl bench``'s jobs (flowssl/launch.py); the plan's ``slurm = dict(...)`` sets the same keys."""
    p.add_argument("--launcher", default="inprocess", metavar="{inprocess,local,slurm}",
                   help="inprocess (default): every step here, one after another; local: each step a submitit job "
                        "on this machine; slurm: submitit jobs chained by dependencies, requeued on time-out")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--nodes", type=int, help="nodes per pretraining job (default: the plan's slurm.nodes, else 1)")
    p.add_argument("--gpus-per-node", type=int, help="GPUs per node (default: the plan's slurm.gpus_per_node, else 8)")
    p.add_argument("--timeout", type=int, metavar="MIN",
                   help="wall-clock limit per job in minutes (SLURM --time, default 1440); a job reaching it saves "
                        "and is requeued")
    p.add_argument("--account", help="SLURM account")
    p.add_argument("--qos", help="SLURM quality of service")
    p.add_argument("--constraint", help="SLURM node constraint")
    p.add_argument("--dry-run", action="store_true", help="--launcher slurm: build the jobs and write their sbatch "
                                                          "scripts, submit nothing")
    p.add_argument("--status", action="store_true",
                   help="each step's state: queued / running / requeued n times / done / failed (with its log)")


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import PRESETS, Bench

    if not args.plan and not args.preset:
        raise ConfigError("give a plan file or --preset tiny")
    plan = PRESETS[args.preset] if args.preset else Path(args.plan)
    work = args.work_dir or str(Path("work_dirs") / f"bench_{Path(plan).stem}")
    from .launch import bench_command

    print(bench_command(Bench(plan, work, args.seeds), args), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowssl", description=__doc__,
                                     epilog="--debug (anywhere): show the traceback of a user error")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_pretrain(sub)
    _add_demo(sub)
    _add_flow(sub)
    _add_convert(sub)
    _add_tables(sub)
    _add_show(sub)
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere on the line: show tracebacks of user errors too
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    from pretrain.dist import rank
    from pretrain.trainer import TrainingInterrupted

    try:
        return args.func(args)
    except TrainingInterrupted as exc:
        if rank() == 0:  # every rank stops; one says so
            print(f"flowssl: {exc}; continue with --resume", file=sys.stderr)
        return 128 + exc.signum
    except Exception as exc:
        msg = user_error_message(exc)
        if msg is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"flowssl: error: {msg}", file=sys.stderr)
        if not debug:
            print("flowssl: (run again with --debug for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
