"""python -m git_scratch.convert SRC DST: the same as `git-scratch convert SRC DST` (cli/convert.py parses it)."""

import sys

from git_scratch.cli.main import main

sys.exit(main(["convert", *sys.argv[1:]]))
