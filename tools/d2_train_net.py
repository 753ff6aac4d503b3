"""``python tools/d2_train_net.py --config-file CONFIG ...`` — detectron2's train_net with flowssl's
backbones and datasets (``flowssl/d2_train_net.py``); also ``python -m flowssl.d2_train_net``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from flowssl.d2_train_net import argument_parser, cli, main  # noqa: E402, F401  (tests load main from here)

if __name__ == "__main__":
    cli()
