"""`python -m compress`: the `dit-compress` console script (pyproject's [project.scripts]), for a Python
whose scripts folder is not on PATH. The same program, so it names itself `dit-compress` in its usage,
its errors and its hints (argparse's prog: cli_parser.build_parser), as `python -m compress.cli` does
(`accelerate launch ... -m compress.cli`). `import compress` does not import this module."""

import sys

from compress.cli_entry import main

if __name__ == "__main__":
    sys.exit(main())
