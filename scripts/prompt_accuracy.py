#!/usr/bin/env python3
"""How often a world model draws a prompt right: seeds 0..N-1, read back by the exact checker.

    python scripts/prompt_accuracy.py "a big red circle above a small blue square on a white background" \
        "a red circle above a small blue square" [--seeds 40] [--model DIR]
    python scripts/prompt_accuracy.py --heldout 400

Prints one row per prompt (the README's table of prompts in and out of the world's grammar).
``--grid PNG`` also draws the first ``--grid-seeds`` seeds of each prompt twice, completed by
the model's prompt completion and as given, each picture captioned with what it was drawn from
and the checker's verdict (``docs/partial_prompts.png``).
``--heldout N`` adds two rows: the share of N held-out prompts (colour-shape pairs never seen
in training, every attribute stated) drawn right, and the same for partial paraphrases of
them that leave out the background and each size with probability 0.5 each
(:func:`snapfusion.data.partial_caption`); one image per prompt, seeds fixed.
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
    from snapfusion.data import check, eval_prompts, parse_caption, partial_caption

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("prompts", nargs="*")
    p.add_argument("--seeds", type=int, default=40)
    p.add_argument("--model", default=None, help="pipeline folder (default: the embedded model)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--heldout", type=int, default=0, metavar="N",
                   help="also score N held-out prompts, full and partial (one image each)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--no-complete", action="store_true",
                   help="draw prompts as given, without the model's prompt completion")
    p.add_argument("--grid", default=None, metavar="PNG",
                   help="also write a picture grid: each prompt completed and as given")
    p.add_argument("--grid-seeds", type=int, default=8, help="seeds (columns) of the grid")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    if not 0 <= args.heldout <= 100_000:
        p.error("--heldout must be in [0, 100000]")
    if not args.prompts and not args.heldout:
        p.error("give prompts, --heldout N, or both")
    if args.grid and not (args.prompts and 1 <= args.grid_seeds <= 64):
        p.error("--grid needs prompts and 1 <= --grid-seeds <= 64")
    for prompt in args.prompts:
        try:
            parse_caption(prompt)
        except ValueError as exc:
            p.error(f"not a prompt of the world's grammar: {exc}")
    pipe = Pipeline.from_pretrained(args.model, threads=args.threads)
    pipe.set_progress_bar_config(disable=True)
    guidance = {} if args.guidance is None else {"guidance_scale": args.guidance}
    kw = {**guidance, "complete_prompt": False if args.no_complete else None}  # None: the model's

    def to_u8(image: np.ndarray) -> np.ndarray:  # the pipeline's float [0, 1] -> what the checker reads
        return (np.asarray(image) * 255).round().astype(np.uint8)

    how = "as given" if args.no_complete or "prompt_completion" not in pipe.recommended else "completed"
    print(f"| prompt | drawn right ({pipe.name}, prompts {how}, seeds 0-{args.seeds - 1}) |\n|---|---|")
    for prompt in args.prompts:
        right = 0
        for seed in range(args.seeds):
            image = pipe(prompt, seed=seed, output_type="np", **kw).images[0]
            right += check(to_u8(image), prompt).ok
        print(f'| "{prompt}" | {right} of {args.seeds} |', flush=True)
    if args.heldout:
        full, _ = eval_prompts(args.heldout, seed=77, split="heldout")
        rng = np.random.default_rng(5)
        partial = [partial_caption(c, rng, 0.5) for c in full]
        for name, prompts in ((f"{args.heldout} held-out prompts", full),
                              ("the same, sizes and background left out (p = 0.5 each)", partial)):
            right = 0
            for i in range(0, len(prompts), 16):
                chunk = prompts[i:i + 16]
                images = pipe(chunk, seed=1000 + i // 16, output_type="np", **kw).images
                right += sum(check(to_u8(im), c).ok for im, c in zip(images, chunk))
            print(f"| {name} | {100.0 * right / len(prompts):.1f} % |", flush=True)
    if args.grid:
        from snapfusion.data import render_grid

        cells, labels = [], []
        for prompt in args.prompts:
            for complete in (True, False):
                for seed in range(args.grid_seeds):
                    out = pipe(prompt, seed=seed, output_type="np", complete_prompt=complete, **guidance)
                    image = to_u8(out.images[0])
                    verdict = "right" if check(image, prompt).ok else "wrong"
                    drawn = out.prompts[0] if out.prompts[0] != prompt else "(as given)"
                    cells.append(image)
                    labels.append(f"seed {seed}: {drawn} [{verdict}]")
        render_grid(np.stack(cells), labels, cols=args.grid_seeds, cell=128).save(args.grid)
        print(f"wrote {args.grid}: {len(args.prompts)} prompts x (completed, as given) x "
              f"{args.grid_seeds} seeds", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
