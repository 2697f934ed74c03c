#!/usr/bin/env python3
"""Draw docs/default_model.png: what the embedded default model draws for a few world prompts
(top row, seeds 0..n-1, the model's recommended steps and guidance), above the world's own
drawing of each prompt (bottom row), with the exact checker's verdict in each caption.

    python scripts/default_model_grid.py [--n 8] [--seed 3] [--out docs/default_model.png]
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
    from snapfusion.data import check, draw_scene, eval_prompts, render_grid

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8, help="prompts (columns)")
    p.add_argument("--seed", type=int, default=3, help="prompt seed (training-distribution prompts)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "default_model.png"))
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be positive")
    captions, scenes = eval_prompts(args.n, seed=args.seed, split="eval")
    pipe = Pipeline.from_pretrained(threads=args.threads)
    pipe.set_progress_bar_config(disable=True)
    drawn, labels = [], []
    for i, caption in enumerate(captions):
        img = (pipe(caption, seed=i, output_type="np").images[0] * 255).round().astype(np.uint8)
        r = check(img, scenes[i])
        wrong = [a for a in ("count", "colors", "shapes", "sizes", "position", "background")
                 if getattr(r, a) is False]
        drawn.append(img)
        labels.append(f"{caption} [{'all right' if r.ok else 'wrong: ' + ', '.join(wrong)}]")
    size = drawn[0].shape[0]
    truth = [draw_scene(s, size=size) for s in scenes]
    grid = render_grid(np.stack(drawn + truth), labels + ["(the world's own drawing)"] * len(truth),
                       cols=len(captions), cell=128)
    grid.save(args.out)
    print(f"wrote {args.out}: {sum('all right' in t for t in labels)} of {len(labels)} drawn right")
    return 0


if __name__ == "__main__":
    sys.exit(main())
