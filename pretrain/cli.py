"""The ``flowssl`` command: ``flowssl pretrain CONFIG``, ``flowssl demo``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mmengine.config import DictAction

from .config import ConfigError
from .fileio import CheckpointError

# What a user can fix gets one line on stderr and exit code 2, not a traceback.
USER_ERRORS = (ConfigError, CheckpointError, FileNotFoundError, FileExistsError, PermissionError, KeyError)


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain an encoder from a config")
    p.add_argument("config", help="config file (path, or relative to configs/)")
    p.add_argument("--work-dir", help="output folder (default: work_dirs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the work dir")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                   help="override config keys, e.g. max_iters=100 optimizer.lr=0.05")
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .api import Trainer, load_config

    cfg = load_config(args.config, args.cfg_options)
    work_dir = args.work_dir or str(Path("work_dirs") / Path(args.config).stem)
    final = Trainer(cfg, work_dir, resume=args.resume).train()
    print(f"checkpoint: {final}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="offline CPU demo: synthetic video → pretraining (a few minutes)")
    p.add_argument("--work-dir", default="work_dirs/demo")
    p.add_argument("--iters", type=int, default=None, help="pretraining iterations (default: the config's)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.work_dir), iters=args.iters)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowssl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_pretrain(sub)
    _add_demo(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    from .trainer import TrainingInterrupted

    try:
        return args.func(args)
    except USER_ERRORS as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"flowssl: error: {msg}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(f"flowssl: {exc}; continue with --resume", file=sys.stderr)
        return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(main())
