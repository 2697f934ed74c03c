"""The ``snapfusion`` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``snapfusion`` command; returns the exit code."""
    parser = argparse.ArgumentParser(prog="snapfusion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("selfcheck", help="engine versions, CPU features, SD-sized blocks timed")
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: cores)")
    p.add_argument("--repeat", type=int, default=3, help="timed repeats per block")
    args = parser.parse_args(argv)
    if args.command == "selfcheck":
        from . import selfcheck

        if args.threads is not None and args.threads < 1:
            parser.error("--threads must be >= 1")
        return selfcheck.main(threads=args.threads, repeat=args.repeat)
    return 2
