"""``python -m data_builders.synthetic OUT ...``: the same as ``mpo synthetic OUT ...``."""

import sys

from data_builders.synthetic.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
