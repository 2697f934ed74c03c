"""``python -m snapfusion.train <recipe> [--config cfg.json] ...``: run one training recipe."""

from __future__ import annotations

import importlib
import sys

from . import RECIPES

_MODULES = {"tokenizer": "tokenizer", "clip": "clip", "vae": "vae", "teacher": "teacher", "robust": "robust",
            "evolve": "evolution", "distill": "distill", "partial": "partial", "decoder": "decoder", "export": "export",
            "latency": "latency", "report": "report"}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the recipe's ``main``."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in _MODULES:
        print("usage: python -m snapfusion.train {" + ",".join(RECIPES) + "} [options]\n"
              "       python -m snapfusion.train <recipe> --help", file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    module = importlib.import_module(f"snapfusion.train.{_MODULES[args[0]]}")
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
