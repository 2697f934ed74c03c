"""The engine's models and pipeline against diffusers / transformers on random-weight models.

Every reference model is built here by the reference library (or by ``snapfusion.nn`` for the
elastic UNet and the channel-reduced VAE decoder, whose equality to diffusers is checked in
``test_nn.py``), every parameter is re-randomised (see ``_random_models.randomize_``), and
the model is saved with ``save_pretrained`` (safetensors) into a temporary folder that the
engine then loads. Tolerance for the models: max abs error <= 1e-4 * max |reference|.

The whole pipeline is compared with diffusers' ``StableDiffusionPipeline`` built from the same
random components (a tiny tokenizer written here, 32x48 images): every step's latents
(atol 1e-3, rtol 1e-4) and the images (atol 1e-3), for the PNDM, DDIM, Euler and
DPM-Solver++ schedulers, with and without guidance, negative prompts, several images per
prompt, the same ``torch.Generator``, clip_skip and a callback that stops the loop.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _random_models as rm  # noqa: E402

from snapfusion import _engine  # noqa: E402
from snapfusion.components import AutoencoderKL, TextEncoder, UNet  # noqa: E402
from snapfusion.nn import elastic  # noqa: E402

REL = 1e-4
#: largest relative error seen per component (printed at the end of the module)
ERRORS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """Run torch and the engine on one thread; report the largest errors at the end."""
    torch_threads = torch.get_num_threads()
    engine_threads = _engine.get_num_threads()
    torch.set_num_threads(1)
    _engine.set_num_threads(1)
    yield
    torch.set_num_threads(torch_threads)
    _engine.set_num_threads(engine_threads)
    if ERRORS:
        print("\nlargest error per component (models: / max|reference|; pipeline: absolute):")
        for name, err in sorted(ERRORS.items()):
            print(f"  {name:28s} {err:.3e}")


def check(component: str, got: np.ndarray, ref: Any, rel: float = REL) -> float:
    """Assert ``max|got - ref| <= rel * max|ref|``; record the ratio under ``component``."""
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert got.shape == ref.shape, (component, got.shape, ref.shape)
    assert got.dtype == np.float32, got.dtype
    assert np.isfinite(ref).all()
    scale = float(np.max(np.abs(ref)))
    assert scale > 0
    err = float(np.max(np.abs(got.astype(np.float64) - ref))) / scale
    ERRORS[component] = max(ERRORS.get(component, 0.0), err)
    assert err <= rel, f"{component}: max abs error {err:.3e} * max|ref| (allowed {rel:.0e})"
    return err


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("parity")


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ====================================================================== text encoder

CLIP_CASES = {
    # SD-1.x: quick_gelu, legacy eos id 2 (pool at the largest id)
    "quick_gelu": rm.clip_config(hidden_act="quick_gelu", eos_token_id=2),
    # gelu (SD-2 OpenCLIP style) and a real eos id (pool at the first eos)
    "gelu": rm.clip_config(hidden_act="gelu", eos_token_id=999, num_hidden_layers=3,
                           hidden_size=48, intermediate_size=80, num_attention_heads=3),
}


@pytest.fixture(scope="module")
def clip_models(workdir: Path) -> dict[str, tuple[Any, Path]]:
    out = {}
    for i, (name, cfg) in enumerate(CLIP_CASES.items()):
        model = rm.transformers_clip(cfg, seed=100 + i)
        folder = workdir / f"clip_{name}"
        model.save_pretrained(folder, safe_serialization=True)
        out[name] = (model, folder)
    return out


def clip_ids(seed: int, batch: int = 4, length: int = 77) -> np.ndarray:
    """Token rows: bos 998, random ids, eos/pad 999 at various places; the last row has no eos."""
    ids = rng(seed).integers(3, 998, (batch, length))
    ids[:, 0] = 998
    ids[0, 9:] = 999                  # short prompt padded with eos
    ids[1, length - 1] = 999          # eos only at the end
    ids[2, 30] = 999                  # eos, then other ids
    return ids


def final_norm(model: Any) -> Any:
    """The text model's final LayerNorm (transformers 4.x nests it under ``text_model``)."""
    return model.text_model.final_layer_norm if hasattr(model, "text_model") \
        else model.final_layer_norm


@pytest.mark.parametrize("name", list(CLIP_CASES))
def test_text_encoder(clip_models: dict[str, tuple[Any, Path]], name: str) -> None:
    model, folder = clip_models[name]
    enc = TextEncoder.from_pretrained(folder)
    ids = clip_ids(1)
    for length in (77, 12):  # full context and a shorter sequence
        x = ids[:, :length]
        with torch.no_grad():
            ref = model(torch.from_numpy(x), output_hidden_states=True)
        hidden, pooled = enc(x, return_pooled=True)
        check("text_encoder", hidden, ref.last_hidden_state)
        check("text_encoder.pooled", pooled, ref.pooler_output)
        assert np.array_equal(hidden, enc(x))
        # diffusers' clip_skip: final_layer_norm(hidden_states[-(clip_skip + 1)])
        for skip in (1, 2):
            with torch.no_grad():
                want = final_norm(model)(ref.hidden_states[-(skip + 1)])
            check("text_encoder.clip_skip", enc(x, clip_skip=skip), want)


# ====================================================================== UNet (diffusers)

UNET_CASES: dict[str, dict[str, Any]] = {
    # 2 levels, attention at the top only
    "small": rm.unet_config(),
    # the SD-v1.5 topology with small channels (4 levels, 2 layers, attention in 3 levels)
    "sd15": rm.unet_config(
        down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        block_out_channels=[8, 16, 24, 24], layers_per_block=2, norm_num_groups=4,
        attention_head_dim=2),
    # no mid block
    "no_mid": rm.unet_config(mid_block_type=None, layers_per_block=2,
                             up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"]),
    # SD-2 style: linear projections, per-block heads, 2 transformer blocks in level 1,
    # only_cross_attention in levels 1 and 2 (the mid block never uses it), the up depths
    # from reverse_transformer_layers_per_block
    "sd2": rm.unet_config(
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        block_out_channels=[16, 24, 32], use_linear_projection=True,
        attention_head_dim=[2, 3, 4], transformer_layers_per_block=[1, 2, 1],
        reverse_transformer_layers_per_block=[1, 1, 3],
        only_cross_attention=[False, True, True], layers_per_block=[1, 2, 1]),
    # only_cross_attention everywhere (bool form) with an attention bottom level
    "only_cross": rm.unet_config(
        down_block_types=["CrossAttnDownBlock2D"] * 2, up_block_types=["CrossAttnUpBlock2D"] * 2,
        only_cross_attention=True, in_channels=3, out_channels=5, flip_sin_to_cos=False,
        freq_shift=1),
}

#: (batch, h, w) latent sizes; odd sizes exercise the upsamplers' resize-to-skip path
UNET_SIZES = [(3, 8, 8), (3, 7, 11), (2, 9, 13)]


@pytest.fixture(scope="module")
def unet_models(workdir: Path) -> dict[str, tuple[Any, Path]]:
    out = {}
    for i, (name, cfg) in enumerate(UNET_CASES.items()):
        model = rm.diffusers_unet(cfg, seed=200 + i)
        folder = workdir / f"unet_{name}"
        model.save_pretrained(folder, safe_serialization=True)
        out[name] = (model, folder)
    return out


def unet_inputs(seed: int, batch: int, cin: int, h: int, w: int, ctx_dim: int,
                ctx_len: int = 9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = rng(seed)
    x = g.standard_normal((batch, cin, h, w)).astype(np.float32)
    t = np.array([0.5, 321.75, 999.0][:batch], np.float32)  # float timesteps
    ctx = g.standard_normal((batch, ctx_len, ctx_dim)).astype(np.float32)
    return x, t, ctx


def torch_unet(model: Any, x: np.ndarray, t: np.ndarray, ctx: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx))
    out = out.sample if hasattr(out, "sample") else out
    return out.numpy()


@pytest.mark.parametrize("name", list(UNET_CASES))
def test_unet(unet_models: dict[str, tuple[Any, Path]], name: str) -> None:
    model, folder = unet_models[name]
    unet = UNet.from_pretrained(folder)
    cfg = model.config
    for k, (b, h, w) in enumerate(UNET_SIZES):
        x, t, ctx = unet_inputs(k, b, cfg.in_channels, h, w, cfg.cross_attention_dim)
        check("unet", unet(x, t, ctx), torch_unet(model, x, t, ctx))
    # an integer scalar timestep is broadcast over the batch, as diffusers does
    x, _, ctx = unet_inputs(9, 2, cfg.in_channels, 8, 8, cfg.cross_attention_dim)
    with torch.no_grad():
        ref = model(torch.from_numpy(x), 17, torch.from_numpy(ctx)).sample
    check("unet", unet(x, 17, ctx), ref)


def test_unet_thread_count(unet_models: dict[str, tuple[Any, Path]]) -> None:
    """Two engine threads give the same result (within tolerance) as one."""
    model, folder = unet_models["sd15"]
    unet = UNet.from_pretrained(folder)
    x, t, ctx = unet_inputs(3, 3, 4, 7, 11, model.config.cross_attention_dim)
    ref = torch_unet(model, x, t, ctx)
    try:
        _engine.set_num_threads(2)
        check("unet", unet(x, t, ctx), ref)
    finally:
        _engine.set_num_threads(1)


# ====================================================================== elastic UNet

ELASTIC_BASE = rm.unet_config(
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[16, 32, 32], layers_per_block=2, transformer_layers_per_block=2)

#: blocks removed in both elastic cases (identity replaces each)
ELASTIC_REMOVED = [
    "down_blocks.0.resnets.1", "down_blocks.1.attentions.0", "down_blocks.2.resnets.1",
    "mid_block.resnets.1", "mid_block.attentions.0",
    "up_blocks.0.resnets.0",       # up layer 0: prev == out, its skip is discarded
    "up_blocks.1.resnets.2", "up_blocks.2.attentions.1",
]


def elastic_removed_config() -> dict[str, Any]:
    """Removals and one shallower transformer (depth 2 -> 1): expressible in diffusers."""
    cfg = elastic.with_blocks_removed(ELASTIC_BASE, ELASTIC_REMOVED)
    cfg["elastic_blocks"]["up_blocks"][2][2]["attention"] = 1
    return cfg


def elastic_added_config() -> dict[str, Any]:
    """Removals plus attention added to DownBlock2D / UpBlock2D layers and deeper ones."""
    cfg = elastic.with_blocks_removed(ELASTIC_BASE, ELASTIC_REMOVED)
    eb = cfg["elastic_blocks"]
    eb["down_blocks"][2][0]["attention"] = 1
    eb["up_blocks"][0][1]["attention"] = 3
    eb["up_blocks"][0][2]["attention"] = 1
    eb["up_blocks"][1][0]["attention"] = 3
    eb["mid_block"]["attention"] = 2
    return cfg


def elastic_no_mid_config() -> dict[str, Any]:
    base = dict(ELASTIC_BASE, mid_block_type=None)
    cfg = elastic.with_blocks_removed(base, ["down_blocks.1.resnets.1", "up_blocks.1.resnets.0",
                                             "up_blocks.2.attentions.0"])
    cfg["elastic_blocks"]["down_blocks"][2][1]["attention"] = 2
    return cfg


def elastic_mid_attention_only_config() -> dict[str, Any]:
    """The mid block without its first ResNet: its attention reads the last down skip, which
    the up blocks read too (the engine's in-place attention once overwrote it)."""
    return elastic.with_blocks_removed(ELASTIC_BASE, ["mid_block.resnets.0"])


ELASTIC_CASES = {
    "removed": elastic_removed_config,
    "added": elastic_added_config,
    "no_mid": elastic_no_mid_config,
    "mid_attention_only": elastic_mid_attention_only_config,
}


@pytest.fixture(scope="module")
def elastic_models(workdir: Path) -> dict[str, tuple[Any, Path]]:
    out = {}
    for i, (name, make) in enumerate(ELASTIC_CASES.items()):
        model = rm.snapfusion_unet(make(), seed=300 + i)
        folder = workdir / f"elastic_{name}"
        model.save_pretrained(folder)
        out[name] = (model, folder)
    return out


@pytest.mark.parametrize("name", list(ELASTIC_CASES))
def test_elastic_unet_vs_snapfusion_nn(elastic_models: dict[str, tuple[Any, Path]],
                                       name: str) -> None:
    model, folder = elastic_models[name]
    saved = json.loads((folder / "config.json").read_text())
    assert saved["elastic_blocks"] == elastic.validate_block_list(ELASTIC_CASES[name]())
    unet = UNet.from_pretrained(folder)
    for k, (b, h, w) in enumerate(UNET_SIZES[1:]):
        x, t, ctx = unet_inputs(10 + k, b, 4, h, w, 24)
        check("unet.elastic", unet(x, t, ctx), torch_unet(model, x, t, ctx))


class _RemovedResnet(torch.nn.Module):
    """Stands for a removed ResNet in a diffusers block: passes the hidden state through
    (in an up block the input is ``cat([hidden, skip])``: the skip is discarded)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, hidden_states: Any, temb: Any = None, *args: Any, **kwargs: Any) -> Any:
        return hidden_states[:, : self.channels]


class _RemovedAttention(torch.nn.Module):
    """Stands for a removed Transformer2DModel (diffusers blocks call it with
    ``return_dict=False`` and take element 0)."""

    def forward(self, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        return (hidden_states,)


def bypass_diffusers(model: Any, full: dict[str, Any], kept: dict[str, Any]) -> None:
    """Remove from a diffusers UNet, in place, the blocks the block list ``kept`` lacks
    (``full`` is the block list of the model's architecture)."""

    def apply(resnets: Any, attentions: Any, j: int, want: dict[str, Any],
              have: dict[str, Any]) -> None:
        assert want["attention"] <= have["attention"], "added attention: not a diffusers model"
        if have["resnet"] and not want["resnet"]:
            resnets[j] = _RemovedResnet(resnets[j].out_channels)
        if have["attention"] and not want["attention"]:
            attentions[j] = _RemovedAttention()
        elif want["attention"] < have["attention"]:
            blocks = list(attentions[j].transformer_blocks)[: want["attention"]]
            attentions[j].transformer_blocks = torch.nn.ModuleList(blocks)

    for key in ("down_blocks", "up_blocks"):
        for i, block in enumerate(getattr(model, key)):
            for j, (want, have) in enumerate(zip(kept[key][i], full[key][i])):
                apply(block.resnets, getattr(block, "attentions", None), j, want, have)
    want, have = kept["mid_block"], full["mid_block"]
    mid = model.mid_block
    for j in range(2):
        apply(mid.resnets, mid.attentions, j,
              {"resnet": want["resnets"][j], "attention": want["attention"] if j == 0 else 0},
              {"resnet": have["resnets"][j], "attention": have["attention"] if j == 0 else 0})


def test_elastic_unet_vs_diffusers_bypassed(elastic_models: dict[str, tuple[Any, Path]]) -> None:
    """A pruned UNet equals diffusers' full UNet with the same blocks bypassed (and loads the
    pruned weights strictly: the kept blocks keep their diffusers names)."""
    model, folder = elastic_models["removed"]
    ref = rm.diffusers_unet(ELASTIC_BASE, seed=0)
    bypass_diffusers(ref, elastic.full_block_list(ELASTIC_BASE),
                     elastic.validate_block_list(elastic_removed_config()))
    ref.load_state_dict(model.state_dict(), strict=True)
    unet = UNet.from_pretrained(folder)
    for k, (b, h, w) in enumerate(UNET_SIZES):
        x, t, ctx = unet_inputs(20 + k, b, 4, h, w, 24)
        want = torch_unet(ref, x, t, ctx)
        check("unet.elastic_vs_diffusers", unet(x, t, ctx), want)
        # the two references agree as well
        check("unet.elastic_nn_vs_diffusers", torch_unet(model, x, t, ctx), want)


# ====================================================================== VAE

VAE_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    # diffusers, 3 levels, 2 layers
    "diffusers": ("diffusers", rm.vae_config(
        block_out_channels=[8, 16, 16], down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3, layers_per_block=2, norm_num_groups=4)),
    # diffusers without mid attention and quant convs
    "diffusers_plain": ("diffusers", rm.vae_config(
        mid_block_add_attention=False, use_quant_conv=False, use_post_quant_conv=False,
        latent_channels=3)),
    # snapfusion.nn channel-reduced decoder: fewer channels, layers and groups
    "reduced_decoder": ("snapfusion", rm.vae_config(
        block_out_channels=[8, 16, 16], down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3, layers_per_block=2, norm_num_groups=4,
        decoder_block_out_channels=[4, 8, 12], decoder_layers_per_block=1,
        decoder_norm_num_groups=2)),
    # only the channels reduced
    "reduced_channels": ("snapfusion", rm.vae_config(decoder_block_out_channels=[8, 16])),
}


@pytest.fixture(scope="module")
def vae_models(workdir: Path) -> dict[str, tuple[Any, Path]]:
    out = {}
    for i, (name, (lib, cfg)) in enumerate(VAE_CASES.items()):
        make = rm.diffusers_vae if lib == "diffusers" else rm.snapfusion_vae
        model = make(cfg, seed=400 + i)
        folder = workdir / f"vae_{name}"
        if lib == "diffusers":
            model.save_pretrained(folder, safe_serialization=True)
        else:
            model.save_pretrained(folder)
        out[name] = (model, folder)
    return out


def torch_decode(model: Any, z: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model.decode(torch.from_numpy(z))
    return (out.sample if hasattr(out, "sample") else out).numpy()


def torch_encode(model: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, logvar) of the posterior."""
    with torch.no_grad():
        out = model.encode(torch.from_numpy(x))
    if hasattr(out, "latent_dist"):
        return out.latent_dist.mean.numpy(), out.latent_dist.logvar.numpy()
    return out[0].numpy(), out[1].numpy()


@pytest.mark.parametrize("name", list(VAE_CASES))
def test_vae(vae_models: dict[str, tuple[Any, Path]], name: str) -> None:
    model, folder = vae_models[name]
    cfg = VAE_CASES[name][1]
    vae = AutoencoderKL.from_pretrained(folder)
    f = 2 ** (len(cfg["block_out_channels"]) - 1)
    lat = cfg["latent_channels"]
    g = rng(40)
    for b, h, w in [(2, 16, 24), (1, 13, 21), (2, 9, 10)]:   # image sizes, odd ones too
        z = g.standard_normal((b, lat, max(h // f, 1), max(w // f, 1))).astype(np.float32)
        check("vae.decode", vae.decode(z), torch_decode(model, z))
        x = g.uniform(-1, 1, (b, 3, h, w)).astype(np.float32)
        mean, logvar = torch_encode(model, x)
        dist = vae.encode(x)
        check("vae.encode.mean", dist.mean, mean)
        check("vae.encode.logvar", dist.logvar, logvar)
        check("vae.encode.std", dist.std, np.exp(0.5 * logvar))


def test_vae_decoder_keys_checked(vae_models: dict[str, tuple[Any, Path]],
                                  tmp_path: Path) -> None:
    """Decoder keys that disagree with the weights or the channels are errors, not ignored."""
    _, folder = vae_models["reduced_decoder"]
    cfg = json.loads((folder / "config.json").read_text())
    weights = (folder / "diffusion_pytorch_model.safetensors").read_bytes()
    cases = [
        ({"decoder_layers_per_block": 2}, "decoder.up_blocks"),          # too many ResNets
        ({"decoder_norm_num_groups": 3}, "decoder_norm_num_groups"),     # 4 % 3 != 0
        ({"decoder_norm_num_groups": 0}, "decoder_norm_num_groups"),
        ({"decoder_layers_per_block": "one"}, "decoder_layers_per_block"),
        ({"decoder_block_out_channels": [4, 8]}, "decoder_block_out_channels"),
    ]
    for k, (change, match) in enumerate(cases):
        d = tmp_path / str(k)
        d.mkdir()
        (d / "config.json").write_text(json.dumps(dict(cfg, **change)))
        (d / "diffusion_pytorch_model.safetensors").write_bytes(weights)
        with pytest.raises(ValueError, match=match):
            AutoencoderKL.from_pretrained(d)


def test_unet_unsupported_keys_rejected(unet_models: dict[str, tuple[Any, Path]],
                                        tmp_path: Path) -> None:
    """diffusers keys that change the graph and that the engine does not implement are errors
    (never silently computed as the default); a wrong-length reverse depth list too."""
    _, folder = unet_models["small"]
    cfg = json.loads((folder / "config.json").read_text())
    weights = (folder / "diffusion_pytorch_model.safetensors").read_bytes()
    cases = [
        ({"mid_block_scale_factor": 2.0}, "mid_block_scale_factor"),
        ({"downsample_padding": 0}, "downsample_padding"),
        ({"time_embedding_act_fn": "silu"}, "time_embedding_act_fn"),
        ({"timestep_post_act": "silu"}, "timestep_post_act"),
        ({"reverse_transformer_layers_per_block": [1, 1, 1]},
         "reverse_transformer_layers_per_block"),
        ({"reverse_transformer_layers_per_block": [1, 2]}, "transformer_blocks.1"),  # missing
    ]
    for k, (change, match) in enumerate(cases):
        d = tmp_path / str(k)
        d.mkdir()
        (d / "config.json").write_text(json.dumps(dict(cfg, **change)))
        (d / "diffusion_pytorch_model.safetensors").write_bytes(weights)
        with pytest.raises(ValueError, match=match):
            UNet.from_pretrained(d)


# ====================================================================== F16 / BF16 weights

def stored_dtypes(folder: Path) -> set[str]:
    """The dtypes in the safetensors header of a component folder."""
    data = next(folder.glob("*.safetensors")).read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_half_precision_weights(clip_models: dict[str, tuple[Any, Path]],
                                unet_models: dict[str, tuple[Any, Path]],
                                vae_models: dict[str, tuple[Any, Path]], workdir: Path,
                                dtype: str) -> None:
    """Weights stored as F16 / BF16 (from the same random models) are computed in float32 and
    match the reference run on the same rounded weights."""
    g = rng(50)
    # text encoder
    model, folder = clip_models["quick_gelu"]
    half = workdir / f"clip_{dtype}"
    rm.store_as(folder, half, dtype)
    assert stored_dtypes(half) == {dtype}
    ref_model = rm.round_state_dict(copy.deepcopy(model), dtype)
    ids = clip_ids(5)
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(ids)).last_hidden_state
        unrounded = model(torch.from_numpy(ids)).last_hidden_state
    check(f"text_encoder.{dtype}", TextEncoder.from_pretrained(half)(ids), ref)
    assert float((ref - unrounded).abs().max() / ref.abs().max()) > REL  # rounding is visible

    # UNet
    model, folder = unet_models["sd2"]
    half = workdir / f"unet_{dtype}"
    rm.store_as(folder, half, dtype)
    assert stored_dtypes(half) == {dtype}
    ref_model = rm.round_state_dict(copy.deepcopy(model), dtype)
    x, t, ctx = unet_inputs(51, 2, 4, 7, 11, 24)
    ref = torch_unet(ref_model, x, t, ctx)
    check(f"unet.{dtype}", UNet.from_pretrained(half)(x, t, ctx), ref)
    assert np.max(np.abs(ref - torch_unet(model, x, t, ctx))) > REL * np.max(np.abs(ref))

    # VAE
    model, folder = vae_models["diffusers"]
    half = workdir / f"vae_{dtype}"
    rm.store_as(folder, half, dtype)
    assert stored_dtypes(half) == {dtype}
    ref_model = rm.round_state_dict(copy.deepcopy(model), dtype)
    vae = AutoencoderKL.from_pretrained(half)
    z = g.standard_normal((1, 4, 3, 5)).astype(np.float32)
    check(f"vae.decode.{dtype}", vae.decode(z), torch_decode(ref_model, z))
    x = g.uniform(-1, 1, (1, 3, 13, 21)).astype(np.float32)
    check(f"vae.encode.{dtype}", vae.encode(x).mean, torch_encode(ref_model, x)[0])


# ====================================================================== pipeline

SD15_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "steps_offset": 1, "set_alpha_to_one": False,
    "clip_sample": False, "skip_prk_steps": True, "prediction_type": "epsilon",
}
PROMPTS = ["a red cat on the blue horse", "the horse"]
NEGATIVE = ["blurry, low quality", "red"]
HEIGHT, WIDTH = 32, 48


@pytest.fixture(scope="module")
def pipelines(workdir: Path) -> tuple[Any, Path]:
    """A diffusers StableDiffusionPipeline of random components, saved with save_pretrained;
    returns it and its folder."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    tok_dir = workdir / "tokenizer_src"
    vocab = rm.write_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    text_encoder = rm.transformers_clip(rm.clip_config(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=3, bos_token_id=vocab - 2,
        eos_token_id=vocab - 1, pad_token_id=vocab - 1), seed=500)
    unet = rm.diffusers_unet(rm.unet_config(cross_attention_dim=32, sample_size=8), seed=501)
    vae = rm.diffusers_vae(rm.vae_config(
        block_out_channels=[8, 16, 16], down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3, norm_num_groups=4), seed=502)
    if not hasattr(text_encoder, "text_model"):
        # diffusers' clip_skip path reads text_encoder.text_model.final_layer_norm, which
        # transformers 5 moved to the model itself: alias it without registering a submodule
        object.__setattr__(text_encoder, "text_model", text_encoder)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    folder = workdir / "pipeline"
    pipe.save_pretrained(folder, safe_serialization=True)
    # transformers 5 saves tokenizers as tokenizer.json only; model folders (SD-1.x on the Hub)
    # carry vocab.json and merges.txt: store the tokenizer that way
    shutil.rmtree(folder / "tokenizer")
    shutil.copytree(tok_dir, folder / "tokenizer")
    # the scheduler config as SD-1.5 ships it: keys it lacks (timestep_spacing, ...) take the
    # defaults of whichever scheduler class is built from it
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        dict(SD15_SCHEDULER, _class_name="PNDMScheduler", trained_betas=None), indent=2))
    return pipe, folder


def run_both(pipelines: tuple[Any, Path], scheduler: str, *, stop_after: int | None = None,
             scheduler_options: dict[str, Any] | None = None,
             **kwargs: Any) -> tuple[Any, Any, list[np.ndarray], list[np.ndarray]]:
    """Run diffusers and our pipeline with the same arguments (``latents`` given as numpy,
    ``generator`` as a seed for one torch.Generator each).

    Both build the scheduler class ``scheduler`` from the saved ``scheduler_config.json``
    (ours through ``Pipeline.from_pretrained(scheduler=...)``), updated by
    ``scheduler_options`` if given (ours then through the class's ``from_config``).

    Returns:
        (diffusers images, our output, diffusers latents per step, our latents per step).
    """
    from snapfusion import schedulers
    from snapfusion.pipeline import Pipeline

    ref_pipe, folder = pipelines
    cls = getattr(diffusers, scheduler)
    config = dict(cls.load_config(folder / "scheduler"), **(scheduler_options or {}))
    ref_pipe.scheduler = cls.from_config(config)
    ours = Pipeline.from_pretrained(folder, scheduler=scheduler)
    if scheduler_options:
        ours.scheduler = getattr(schedulers, scheduler).from_config(config)
    ours.set_progress_bar_config(disable=True)
    ref_steps: list[np.ndarray] = []
    our_steps: list[np.ndarray] = []

    def ref_cb(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        ref_steps.append(tensors["latents"].numpy().copy())
        if stop_after is not None and i == stop_after:
            pipe._interrupt = True
        return tensors

    def our_cb(i: int, t: Any, latents: np.ndarray) -> bool:
        our_steps.append(np.array(latents, copy=True))
        return not (stop_after is not None and i == stop_after)

    ref_kw = dict(kwargs)
    our_kw = dict(kwargs)
    if "latents" in kwargs:
        ref_kw["latents"] = torch.from_numpy(kwargs["latents"])
    if "generator" in kwargs:
        ref_kw["generator"] = torch.Generator().manual_seed(kwargs["generator"])
        our_kw["generator"] = torch.Generator().manual_seed(kwargs["generator"])
    with torch.no_grad():
        ref = ref_pipe(height=HEIGHT, width=WIDTH, output_type="np",
                       callback_on_step_end=ref_cb, **ref_kw).images
    out = ours(height=HEIGHT, width=WIDTH, output_type="np", callback_on_step_end=our_cb,
               **our_kw)
    return ref, out, ref_steps, our_steps


def check_images(name: str, got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    # the comparison means something: most pixels are not clipped to 0 or 1
    assert np.mean((ref > 0.01) & (ref < 0.99)) > 0.5
    err = float(np.max(np.abs(got - ref)))
    ERRORS[f"pipeline.image.{name}"] = max(ERRORS.get(f"pipeline.image.{name}", 0.0), err)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-3)


def check_latents(name: str, got: list[np.ndarray], ref: list[np.ndarray]) -> None:
    assert len(got) == len(ref) and got
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-3)
    err = float(np.max(np.abs(got[-1] - ref[-1])))
    ERRORS[f"pipeline.latents.{name}"] = max(ERRORS.get(f"pipeline.latents.{name}", 0.0), err)


def latents(seed: int, batch: int) -> np.ndarray:
    return rng(seed).standard_normal((batch, 4, HEIGHT // 4, WIDTH // 4)).astype(np.float32)


PIPELINE_CASES = {
    # scheduler, guidance, steps, extra arguments
    "pndm_cfg_negative": ("PNDMScheduler", 7.5, 4, {"negative_prompt": NEGATIVE}),
    "pndm_no_guidance": ("PNDMScheduler", 1.0, 4, {}),
    "ddim_cfg_2_per_prompt_generator": ("DDIMScheduler", 7.5, 4,
                                        {"num_images_per_prompt": 2, "generator": 7}),
    "euler_cfg": ("EulerDiscreteScheduler", 7.5, 4, {"negative_prompt": NEGATIVE}),
    # DPM-Solver++ 2M: the final step to sigma 0 (diffusers >= 0.26 default) and to the
    # smallest training sigma (diffusers 0.25's, which our class uses when the key is absent)
    "dpmpp_cfg_final_zero": ("DPMSolverMultistepScheduler", 7.5, 5,
                             {"scheduler_options": {"final_sigmas_type": "zero"}}),
    "dpmpp_cfg_final_sigma_min": ("DPMSolverMultistepScheduler", 7.5, 5,
                                  {"scheduler_options": {"final_sigmas_type": "sigma_min"}}),
    "pndm_clip_skip": ("PNDMScheduler", 7.5, 3, {"clip_skip": 1}),
}


@pytest.mark.parametrize("case", list(PIPELINE_CASES))
def test_pipeline(pipelines: tuple[Any, Path], case: str) -> None:
    scheduler, guidance, steps, extra = PIPELINE_CASES[case]
    kwargs = dict(prompt=PROMPTS, num_inference_steps=steps, guidance_scale=guidance, **extra)
    if "generator" not in extra:
        kwargs["latents"] = latents(60, len(PROMPTS) * extra.get("num_images_per_prompt", 1))
    ref, out, ref_steps, our_steps = run_both(pipelines, scheduler, **kwargs)
    assert len(out.timings["unet"]) == len(ref_steps) >= steps  # one UNet call per step
    check_latents(case, our_steps, ref_steps)
    check_images(case, out.images, ref)
    assert not out.stopped_early


def test_pipeline_stops_early(pipelines: tuple[Any, Path]) -> None:
    """callback_on_step_end returning False stops after that step; the image decodes the
    latents reached, like diffusers' interrupt."""
    kwargs = dict(prompt=PROMPTS[:1], num_inference_steps=5, guidance_scale=7.5,
                  latents=latents(61, 1))
    ref, out, ref_steps, our_steps = run_both(pipelines, "DDIMScheduler", stop_after=1,
                                              **kwargs)
    assert out.stopped_early
    assert len(out.timings["unet"]) == 2 and len(our_steps) == 2 and len(ref_steps) == 2
    check_latents("stop_early", our_steps, ref_steps)
    check_images("stop_early", out.images, ref)


def test_pipeline_seed_reproducible(pipelines: tuple[Any, Path]) -> None:
    """The same seed gives the same image bit for bit at the same thread count."""
    from snapfusion.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(pipelines[1], scheduler="DDIMScheduler")
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt=PROMPTS[0], num_inference_steps=3, output_type="np")
    try:
        for threads in (1, 2):
            _engine.set_num_threads(threads)
            a = pipe(seed=123, **kwargs).images
            b = pipe(seed=123, **kwargs).images
            assert np.array_equal(a, b)
            assert not np.array_equal(a, pipe(seed=124, **kwargs).images)
    finally:
        _engine.set_num_threads(1)
