"""``python tools/make_tables.py RESULTS --format md|latex|csv`` — same as ``flowssl tables``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowssl.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["tables", *sys.argv[1:]]))
