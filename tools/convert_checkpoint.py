"""``python tools/convert_checkpoint.py SRC --to detectron2 -o OUT.pkl`` — same as ``flowssl convert``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from flowssl.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
