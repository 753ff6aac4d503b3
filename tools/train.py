"""``python tools/train.py CONFIG ...`` (also under torchrun) — same as ``flowssl pretrain``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from flowssl.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
