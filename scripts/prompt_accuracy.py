#!/usr/bin/env python3
"""How often a world model draws a prompt right: seeds 0..N-1, read back by the exact checker.

    python scripts/prompt_accuracy.py "a big red circle above a small blue square on a white background" \
        "a red circle above a small blue square" [--seeds 40] [--model DIR]

Prints one row per prompt (the README's table of prompts in and out of the world's grammar).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import snapfusion  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from snapfusion import Pipeline
    from snapfusion.data import check, parse_caption

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("prompts", nargs="+")
    p.add_argument("--seeds", type=int, default=40)
    p.add_argument("--model", default=None, help="pipeline folder (default: the embedded model)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    for prompt in args.prompts:
        try:
            parse_caption(prompt)
        except ValueError as exc:
            p.error(f"not a prompt of the world's grammar: {exc}")
    pipe = Pipeline.from_pretrained(args.model, threads=args.threads)
    pipe.set_progress_bar_config(disable=True)
    print(f"| prompt | drawn right ({pipe.name}, seeds 0-{args.seeds - 1}) |\n|---|---|")
    for prompt in args.prompts:
        right = 0
        for seed in range(args.seeds):
            image = pipe(prompt, seed=seed, output_type="np").images[0]
            right += check((image * 255).round().astype(np.uint8), prompt).ok
        print(f'| "{prompt}" | {right} of {args.seeds} |', flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
