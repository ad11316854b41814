"""`dit-compress`'s console script (pyproject's [project.scripts]): a Ctrl-C from its first line on
ends it with one line and status 130, never a traceback.

The console script imports this module and calls `main`; the CLI (argparse, the parser, cli.main's
own handling) is imported and built inside main's `try`, so a Ctrl-C while it loads is caught too.
Nothing else is imported here, and `import compress` does not import this module."""

import sys


def main() -> int:
    try:
        from compress.cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:  # before cli.main handles it (imports, argument parsing), or in its handling
        print("dit-compress: interrupted", file=sys.stderr)
        return 130
