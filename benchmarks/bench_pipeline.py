"""Stable Diffusion v1.5 stages: the engine against diffusers on PyTorch (CPU), same threads.

The real SD-v1.5 architectures (UNet 860 M, VAE decoder, CLIP ViT-L/14 text encoder) with
random weights (speed does not depend on the values) are written once, with diffusers'
``save_pretrained``, into a cache folder; both sides load the same files. Each measurement
runs in its own process so that its peak RSS is its own: text encoder; UNet per call at
256x256 and 512x512 images with batch 2 (classifier-free guidance); VAE decoder at both sizes.

    python benchmarks/bench_pipeline.py [--threads N] [--repeat R] [--sizes 256,512]
                                        [--cache DIR] [--json PATH]

Prints median seconds per call, the ratio diffusers/engine (> 1: the engine is faster), each
side's peak RSS, and the engine UNet's achieved GFLOP/s (MACs counted by the engine x 2 /
time) with its fraction of the machine's FMA peak.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine_info, measure_peak_gflops, median  # noqa: E402

SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}
SD15_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "sample_size": 512,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
CLIP_L = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
    "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
    "hidden_act": "quick_gelu", "projection_dim": 768,
}


def prepare(cache: Path) -> None:
    """Write the random-weight SD-1.5 components (once)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    for name, build in (("unet", lambda: UNet2DConditionModel(**SD15_UNET)),
                        ("vae", lambda: AutoencoderKL(**SD15_VAE)),
                        ("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L)))):
        folder = cache / name
        if (folder / "config.json").is_file():
            continue
        print(f"writing random-weight {name} to {folder} ...", flush=True)
        build().save_pretrained(folder, safe_serialization=True)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Measure one (side, component, size) in this process."""
    import numpy as np

    threads, side, comp, size = args.threads, args.side, args.component, args.size
    cache = Path(args.cache)
    rng = np.random.default_rng(0)
    lat = size // 8
    result: dict[str, Any] = {}
    if side == "engine":
        from snapfusion import _engine
        from snapfusion.components import AutoencoderKL, TextEncoder, UNet

        _engine.set_num_threads(threads)
        if comp == "unet":
            model = UNet(cache / "unet")
            x = rng.standard_normal((2, 4, lat, lat)).astype(np.float32)
            ctx = rng.standard_normal((2, 77, 768)).astype(np.float32)
            fn = lambda: model(x, 500, ctx)  # noqa: E731
        elif comp == "decoder":
            model = AutoencoderKL(cache / "vae", encoder=False, strict=False)
            z = rng.standard_normal((1, 4, lat, lat)).astype(np.float32)
            fn = lambda: model.decode(z)  # noqa: E731
        else:
            model = TextEncoder(cache / "text_encoder")
            ids = rng.integers(0, 49407, (2, 77))
            fn = lambda: model(ids)  # noqa: E731
        fn()
        if comp == "unet":
            _engine.reset_mac_counter()
            fn()
            result["macs"] = _engine.mac_counter()
    else:
        import torch

        torch.set_num_threads(threads)
        torch.set_grad_enabled(False)
        from diffusers import AutoencoderKL as DAE
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        if comp == "unet":
            model = UNet2DConditionModel.from_pretrained(cache / "unet").eval()
            x = torch.from_numpy(rng.standard_normal((2, 4, lat, lat)).astype(np.float32))
            ctx = torch.from_numpy(rng.standard_normal((2, 77, 768)).astype(np.float32))
            t = torch.tensor(500)
            fn = lambda: model(x, t, ctx).sample  # noqa: E731
        elif comp == "decoder":
            model = DAE.from_pretrained(cache / "vae").eval()
            z = torch.from_numpy(rng.standard_normal((1, 4, lat, lat)).astype(np.float32))
            fn = lambda: model.decode(z).sample  # noqa: E731
        else:
            model = CLIPTextModel.from_pretrained(cache / "text_encoder").eval()
            ids = torch.from_numpy(rng.integers(0, 49407, (2, 77)))
            fn = lambda: model(ids).last_hidden_state  # noqa: E731
        with torch.inference_mode():
            fn()
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        if side == "torch":
            import torch

            with torch.inference_mode():
                fn()
        else:
            fn()
        times.append(time.perf_counter() - t0)
    result.update({"s": median(times), "times": times, "rss_mb": _peak_rss_mb()})
    return result


def run_worker(side: str, comp: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # best for PyTorch on these 2-core machines
    cmd = [sys.executable, __file__, "--worker", "--side", side, "--component", comp,
           "--size", str(size), "--threads", str(args.threads), "--repeat", str(args.repeat),
           "--cache", str(args.cache)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{side} {comp} {size} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--sizes", default="256,512")
    p.add_argument("--components", default="text_encoder,unet,decoder")
    p.add_argument("--cache", default="/tmp/snapfusion-bench-sd15")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--side", default="engine", help=argparse.SUPPRESS)
    p.add_argument("--component", default="unet", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=512, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    prepare(cache)
    peak, method = measure_peak_gflops(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    comps = args.components.split(",")
    results: dict[str, Any] = {}
    print(f"threads {args.threads}, fp32 FMA peak {peak:.0f} GFLOP/s ({method}); "
          f"median of {args.repeat}")
    print(f"{'stage':18s} {'engine s':>9s} {'torch s':>9s} {'ratio':>6s} "
          f"{'engine MB':>10s} {'torch MB':>9s} {'GFLOP/s':>8s} {'% peak':>7s}")
    for comp in comps:
        for size in ([77] if comp == "text_encoder" else sizes):
            e = run_worker("engine", comp, size, args)
            t = run_worker("torch", comp, size, args)
            name = comp if comp == "text_encoder" else f"{comp}_{size}"
            row = {"engine_s": e["s"], "torch_s": t["s"], "ratio": t["s"] / e["s"],
                   "engine_rss_mb": e["rss_mb"], "torch_rss_mb": t["rss_mb"]}
            gf = ""
            if "macs" in e:
                row["gflops"] = 2 * e["macs"] / e["s"] / 1e9
                row["peak_fraction"] = row["gflops"] / peak
                row["gmac_per_call"] = e["macs"] / 1e9
                gf = f"{row['gflops']:8.1f} {100 * row['peak_fraction']:6.1f}%"
            results[name] = row
            print(f"{name:18s} {e['s']:9.3f} {t['s']:9.3f} {row['ratio']:6.2f} "
                  f"{e['rss_mb']:10.0f} {t['rss_mb']:9.0f} {gf}", flush=True)
    if args.json:
        info = machine_info(args.threads, peak, method)
        Path(args.json).write_text(json.dumps({**results, "_machine": info}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
