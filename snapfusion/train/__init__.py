"""SnapFusion training recipes on the synthetic world (PyTorch).

Recipes (each a module with a ``main`` command line, run as
``python -m snapfusion.train <recipe> --config cfg.json``):

* ``tokenizer`` -- byte-level BPE in CLIP's file format, learned on the world's captions;
* ``clip`` -- a small CLIP (text tower = the diffusion text encoder) for the world CLIP score
  and world-FID features;
* ``vae`` -- ``AutoencoderKL`` with 4 latent channels, f = 4;
* ``teacher`` -- the SD-v1.5-topology UNet, v-prediction, min-SNR weighting, EMA, CFG dropout;
* ``robust`` -- robust training with stochastic forward propagation (block dropping);
* ``evolve`` -- architecture evolution against an engine-measured latency lookup table;
* ``distill`` -- step distillation (vanilla + CFG-aware) to an 8-step student;
* ``partial`` -- partial-caption tuning (self-distillation over captions that leave the size or
  background out);
* ``decoder`` -- channel-reduced VAE decoder distilled on teacher-generated latents;
* ``export`` -- a diffusers-layout pipeline folder for :class:`snapfusion.Pipeline`;
* ``latency`` -- measure the per-block latency table with the C engine.

Importing this package does not import torch; the recipe modules do.
See ``docs/training.md``.
"""

from __future__ import annotations

RECIPES = ("tokenizer", "clip", "vae", "teacher", "robust", "evolve", "distill", "partial", "decoder", "export",
           "latency", "report")

__all__ = ["RECIPES"]
