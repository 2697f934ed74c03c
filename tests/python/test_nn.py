"""Tests of snapfusion.nn against diffusers / transformers and the golden reference files.

Every reference model is built by the upstream library, every parameter is re-randomised
(no zero layer can hide a bug), and the same state dict is loaded into both
implementations.  Tolerance: max abs error <= 1e-4 * max |reference|.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from snapfusion import nn as snn  # noqa: E402
from snapfusion.nn import elastic  # noqa: E402
from snapfusion.nn.clip import CLIPTextModel  # noqa: E402
from snapfusion.nn.unet import UNet2DConditionModel  # noqa: E402
from snapfusion.nn.vae import AutoencoderKL  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
REL = 1e-4
ERRORS: dict[str, float] = {}

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- helpers
def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-randomise every parameter: norms 1+0.1N / 0.05N, conv & linear N/sqrt(fan_in),
    other biases 0.05N, embeddings 0.1N (the golden-file recipe)."""
    g = torch.Generator().manual_seed(seed)
    norm_types = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for _, mod in module.named_modules():
            for pname, p in mod.named_parameters(recurse=False):
                n = torch.randn(p.shape, generator=g)
                if isinstance(mod, norm_types):
                    p.copy_(1 + 0.1 * n if pname == "weight" else 0.05 * n)
                elif isinstance(mod, torch.nn.Embedding):
                    p.copy_(0.1 * n)
                elif p.ndim >= 2:
                    p.copy_(n / math.sqrt(p[0].numel()))
                else:
                    p.copy_(0.05 * n)
    return module


def check(name: str, ours: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray, rel: float = REL) -> float:
    """Assert max|ours - ref| <= rel * max|ref| and record the error."""
    a = ours.detach().float().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours, np.float32)
    b = ref.detach().float().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref, np.float32)
    assert a.shape == b.shape, f"{name}: shape {a.shape} vs {b.shape}"
    assert np.isfinite(a).all(), f"{name}: non-finite output"
    scale = float(np.abs(b).max())
    assert scale > 0, f"{name}: reference is all zero"
    err = float(np.abs(a - b).max())
    ERRORS[name] = max(ERRORS.get(name, 0.0), err / scale)
    assert err <= rel * scale, f"{name}: max abs err {err:.3e} > {rel:.0e} * {scale:.3e}"
    return err


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if ERRORS:
        print("\n[test_nn] max abs err / max |ref| per comparison:")
        for k in sorted(ERRORS):
            print(f"  {k:60s} {ERRORS[k]:.2e}")


def ref_unet(config: dict, seed: int):
    cfg = {k: v for k, v in config.items() if k != "elastic_blocks" and not k.startswith("_")}
    model = diffusers.UNet2DConditionModel(**cfg)
    return randomize_(model, seed).eval()


def ref_out(model, sample, t, ctx) -> torch.Tensor:
    with torch.no_grad():
        return model(sample, t, encoder_hidden_states=ctx, return_dict=False)[0]


def ours_from(ref_model, config: dict) -> UNet2DConditionModel:
    ours = UNet2DConditionModel(config).eval()
    ours.load_state_dict(ref_model.state_dict(), strict=True)
    return ours


def small_sd15(**over) -> dict:
    cfg = {
        "block_out_channels": [16, 16, 32, 32],
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "layers_per_block": 2,
        "cross_attention_dim": 24,
        "attention_head_dim": 4,
        "norm_num_groups": 8,
        "sample_size": 16,
    }
    cfg.update(over)
    return cfg


def inputs(cfg: dict, b: int, h: int, w: int, seed: int, tokens: int = 7):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(b, cfg.get("in_channels", 4), h, w, generator=g)
    cross = cfg["cross_attention_dim"]
    cross = cross[0] if isinstance(cross, list) else cross
    ctx = torch.randn(b, tokens, cross, generator=g)
    return sample, ctx


# ----------------------------------------------------------------------------- CLIP text encoder
@pytest.mark.parametrize("act,eos", [("quick_gelu", 2), ("gelu", 99)])
def test_clip_text_matches_transformers(act, eos):
    kw = dict(vocab_size=100, hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
              max_position_embeddings=16, hidden_act=act, layer_norm_eps=1e-5, bos_token_id=98,
              eos_token_id=eos, pad_token_id=1 if eos == 2 else eos, projection_dim=32)
    ref = randomize_(transformers.CLIPTextModel(transformers.CLIPTextConfig(**kw)), 11).eval()
    ours = CLIPTextModel(kw).eval()
    ref_sd = ref.state_dict()
    # transformers 5 drops the "text_model." prefix that 4.x and SD checkpoints use
    expected = {k if k.startswith("text_model.") else "text_model." + k for k in ref_sd}
    assert set(ours.state_dict()) == expected
    ours.load_state_dict(CLIPTextModel.convert_state_dict(ref_sd), strict=True)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 97, (3, 16), generator=g)
    ids[:, 0] = 98
    for row, end in enumerate([5, 9, 15]):
        ids[row, end:] = eos if eos != 2 else 99  # legacy: the largest id marks the end
    if eos != 2:
        ids[1, 12] = 0  # the first EOS wins, not later tokens
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    with torch.no_grad():
        r = ref(ids, output_hidden_states=True)
        o = ours(ids, output_hidden_states=True)
        rm = ref(ids, attention_mask=mask)
        om = ours(ids, attention_mask=mask)
    check(f"clip[{act}].last_hidden_state", o.last_hidden_state, r.last_hidden_state)
    check(f"clip[{act}].pooler_output", o.pooler_output, r.pooler_output)
    assert len(o.hidden_states) == len(r.hidden_states) == 4
    for k, (a, b) in enumerate(zip(o.hidden_states, r.hidden_states)):
        check(f"clip[{act}].hidden_states", a, b)
    check(f"clip[{act}].masked", om.last_hidden_state, rm.last_hidden_state)


@pytest.mark.parametrize("folder,npz", [("sd_tiny/text_encoder", "text_encoder_tiny"),
                                        ("text_encoder_ctx", "text_encoder_ctx")])
def test_clip_text_golden(golden_dir, folder, npz):
    model = snn.load_safetensors(golden_dir / folder)
    assert isinstance(model, CLIPTextModel)
    d = np.load(golden_dir / f"{npz}.npz")
    with torch.no_grad():
        out = model(torch.from_numpy(d["input_ids"]), output_hidden_states=True)
        skip1 = model.text_model.final_layer_norm(out.hidden_states[-2])
    check(f"golden.{npz}.last_hidden_state", out.last_hidden_state, d["last_hidden_state"])
    check(f"golden.{npz}.pooler_output", out.pooler_output, d["pooler_output"])
    check(f"golden.{npz}.hidden_states_all", torch.stack(out.hidden_states), d["hidden_states_all"])
    check(f"golden.{npz}.penultimate", out.hidden_states[-2], d["hidden_states_penultimate"])
    check(f"golden.{npz}.clip_skip_1", skip1, d["clip_skip_1"])


def test_clip_loads_legacy_position_ids_and_rejects_bad_ids(tmp_path):
    kw = dict(vocab_size=50, hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2,
              max_position_embeddings=8)
    model = randomize_(CLIPTextModel(kw), 1).eval()
    sd = dict(model.state_dict())
    sd["text_model.embeddings.position_ids"] = torch.arange(8)[None]
    other = CLIPTextModel(kw)
    other.load_state_dict(sd, strict=True)  # older checkpoints store the buffer
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    again = snn.load_safetensors(tmp_path)
    ids = torch.tensor([[49 % 50, 3, 4, 49]])
    with torch.no_grad():
        check("clip.roundtrip", again(ids).last_hidden_state, model(ids).last_hidden_state, rel=0)
    with pytest.raises(ValueError):
        model(torch.tensor([[1, 50]]))
    with pytest.raises(ValueError):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(TypeError):
        model(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(TypeError):
        model([[1, 2]])
    with pytest.raises(ValueError):
        CLIPTextModel(dict(kw, hidden_size=15))
    with pytest.raises(ValueError):
        CLIPTextModel(dict(kw, hidden_act="tanh"))


# ----------------------------------------------------------------------------- UNet vs diffusers
TOPOLOGIES = {
    # 2-level, plain / cross-attention mix, odd latent, scalar int timestep
    "two_level": (dict(block_out_channels=[16, 32], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                       up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1,
                       cross_attention_dim=24, attention_head_dim=2, norm_num_groups=8), (1, 7, 9), 500),
    # SD-v1.5 topology with small channels, per-item int timesteps
    "sd15": (small_sd15(), (2, 16, 24), "per_item"),
    # mid block removed (BK-SDM style), layers_per_block per block, odd latent, float timestep
    "no_mid": (small_sd15(mid_block_type=None, layers_per_block=[1, 2, 1, 2]), (1, 13, 11), 421.75),
    # SD-2 style: linear projection, per-block heads, upcast, deeper transformers, float tensor timestep
    "sd2": (small_sd15(use_linear_projection=True, attention_head_dim=[2, 4, 4, 8], upcast_attention=True,
                       transformer_layers_per_block=[1, 2, 2, 1], flip_sin_to_cos=False, freq_shift=1),
            (2, 9, 8), torch.tensor(37.5)),
    # only-cross attention, time embedding width, post activations, center input
    "variants": (dict(block_out_channels=[16, 32, 32],
                      down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                      up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                      only_cross_attention=[True, False, False], cross_attention_dim=24, attention_head_dim=4,
                      norm_num_groups=8, time_embedding_dim=40, timestep_post_act="silu",
                      time_embedding_act_fn="silu", center_input_sample=True, norm_eps=1e-6,
                      mid_block_scale_factor=2.0, conv_in_kernel=1, conv_out_kernel=3), (1, 8, 8), 999),
}


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_unet_matches_diffusers(name):
    cfg, (b, h, w), t = TOPOLOGIES[name]
    ref = ref_unet(cfg, seed=100 + len(name))
    ours = ours_from(ref, cfg)
    assert list(ours.state_dict()) and set(ours.state_dict()) == set(ref.state_dict())
    sample, ctx = inputs(cfg, b, h, w, seed=5)
    if t == "per_item":
        t = torch.tensor([999, 37])
    with torch.no_grad():
        out = ours(sample, t, ctx)
    check(f"unet[{name}]", out, ref_out(ref, sample, t, ctx))


SD_CONFIGS = {
    "sd15": dict(cross_attention_dim=768, attention_head_dim=8, sample_size=64),
    "sd21": dict(cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True,
                 upcast_attention=True, sample_size=96),
}


@pytest.mark.parametrize("name", sorted(SD_CONFIGS))
def test_full_size_sd_unet_has_diffusers_names_and_shapes(name):
    """Full-size SD UNets (built on the meta device, no memory) have exactly diffusers' keys and shapes,
    so real checkpoints load with strict=True."""
    cfg = SD_CONFIGS[name]
    with torch.device("meta"):
        ref = diffusers.UNet2DConditionModel(**cfg)
        ours = UNet2DConditionModel(cfg)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight" in shapes
    assert shapes["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"] == \
        (320, cfg["cross_attention_dim"])


def test_full_size_sd_vae_and_clip_have_reference_names_and_shapes():
    vae_cfg = dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                   up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, sample_size=512)
    clip_cfg = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                    projection_dim=768)
    with torch.device("meta"):
        pairs = [(diffusers.AutoencoderKL(**vae_cfg), AutoencoderKL(vae_cfg)),
                 (transformers.CLIPTextModel(transformers.CLIPTextConfig(**clip_cfg)), CLIPTextModel(clip_cfg))]
    for ref, ours in pairs:
        ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        if isinstance(ours, CLIPTextModel):
            ref_shapes = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in ref_shapes.items()}
        assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == ref_shapes


HOOKS = ["time_proj", "time_embedding", "conv_in", "mid_block"]


def _with_hooks(model: UNet2DConditionModel):
    store: dict[str, torch.Tensor] = {}

    def grab(key):
        def hook(_m, _i, out):
            store[key] = out[0] if isinstance(out, tuple) else out
        return hook

    handles = [getattr(model, n).register_forward_hook(grab(n)) for n in HOOKS if getattr(model, n) is not None]
    handles += [b.register_forward_hook(grab(f"down_block_{i}")) for i, b in enumerate(model.down_blocks)]
    handles += [b.register_forward_hook(grab(f"up_block_{i}")) for i, b in enumerate(model.up_blocks)]
    return store, handles


@pytest.mark.parametrize("folder,npz", [("unet_sd15_small", "unet_sd15_small"), ("unet_sd2_small", "unet_sd2_small"),
                                        ("unet_bksdm_small", "unet_bksdm_small"), ("sd_tiny/unet", "unet_tiny")])
def test_unet_golden(golden_dir, folder, npz):
    model = snn.load_safetensors(golden_dir / folder)
    assert isinstance(model, UNet2DConditionModel)
    model.eval()
    d = np.load(golden_dir / f"{npz}.npz")
    cases = sorted({k.split("__")[0] for k in d.files})
    store, handles = _with_hooks(model)
    for case in cases:
        store.clear()
        with torch.no_grad():
            out = model(torch.from_numpy(d[f"{case}__sample"]), torch.from_numpy(np.asarray(d[f"{case}__timestep"])),
                        torch.from_numpy(d[f"{case}__encoder_hidden_states"]))
        check(f"golden.{npz}.{case}", out, d[f"{case}__out"])
        for key in [k for k in d.files if k.startswith(f"{case}__hook_")]:
            check(f"golden.{npz}.hooks", store[key.split("__hook_")[1]], d[key], rel=5e-4)
    for hd in handles:
        hd.remove()


def test_bksdm_golden_as_elastic_sd15(golden_dir):
    """BK-SDM (layers_per_block 1, no mid block) equals the SD-1.5 topology with the second
    down layer and the middle up layer of every stage removed (kept layers renamed)."""
    cfg = json.loads((golden_dir / "unet_bksdm_small" / "config.json").read_text())
    full = dict(cfg, layers_per_block=2)
    names = [f"down_blocks.{i}.{k}.1" for i in range(4) for k in ("resnets", "attentions")]
    names += [f"up_blocks.{i}.{k}.1" for i in range(4) for k in ("resnets", "attentions")]
    present = set(elastic.block_names(full))
    pruned = elastic.with_blocks_removed(full, [n for n in names if n in present])
    model = UNet2DConditionModel(pruned).eval()
    from snapfusion.nn.serialization import read_safetensors
    sd = read_safetensors(golden_dir / "unet_bksdm_small" / "diffusion_pytorch_model.safetensors")
    renamed = {re.sub(r"^(up_blocks\.\d+\.(?:resnets|attentions))\.1\.", r"\1.2.", k): v for k, v in sd.items()}
    model.load_state_dict(renamed, strict=True)
    d = np.load(golden_dir / "unet_bksdm_small.npz")
    with torch.no_grad():
        out = model(torch.from_numpy(d["main__sample"]), torch.from_numpy(d["main__timestep"]),
                    torch.from_numpy(d["main__encoder_hidden_states"]))
    check("golden.bksdm_as_elastic", out, d["main__out"])


# ----------------------------------------------------------------------------- elastic vs bypassed diffusers
def _bypass(ref, names: list[str], layout: elastic.UNetLayout) -> None:
    """Make the named diffusers blocks behave as removed: identity, or skip discard for up ResNets."""
    for name in names:
        module = ref.get_submodule(name)
        if ".attentions." in name or ".transformer_blocks." in name:
            if ".transformer_blocks." in name:
                module.forward = lambda x, *a, **k: x
            else:
                module.forward = lambda x, *a, **k: (x,)
        elif name.startswith("up_blocks."):
            out_c = layout.up[int(name.split(".")[1])].out_channels
            module.forward = lambda x, temb=None, *a, _c=out_c, **k: x[:, :_c]
        else:
            module.forward = lambda x, temb=None, *a, **k: x


def test_elastic_removal_matches_bypassed_diffusers():
    cfg = small_sd15(transformer_layers_per_block=2)
    layout = elastic.resolve_unet_config(cfg)
    removed = ["down_blocks.0.resnets.1", "down_blocks.1.attentions.0",
               "down_blocks.1.resnets.1", "down_blocks.1.attentions.1",  # a fully empty layer
               "down_blocks.3.resnets.1", "mid_block.attentions.0", "mid_block.resnets.1",
               "up_blocks.0.resnets.0", "up_blocks.0.resnets.1",  # skip discarded (32 -> 32)
               "up_blocks.1.attentions.2", "up_blocks.2.resnets.2", "up_blocks.3.resnets.0",
               "up_blocks.3.attentions.0"]
    pruned = elastic.with_blocks_removed(cfg, removed)
    # transformer depth 2 -> 1 in one layer
    pruned["elastic_blocks"]["down_blocks"][2][1]["attention"] = 1
    ref = ref_unet(cfg, seed=21)
    full_sd = ref.state_dict()
    _bypass(ref, removed + ["down_blocks.2.attentions.1.transformer_blocks.1"], layout)
    ours = UNet2DConditionModel(pruned).eval()
    info = ours.load_pruned_state_dict(full_sd)
    prefixes = tuple(n + "." for n in removed) + ("down_blocks.2.attentions.1.transformer_blocks.1.",)
    expected_ignored = sorted(k for k in full_sd if k.startswith(prefixes))
    assert info["ignored"] == expected_ignored and info["missing"] == []
    assert set(ours.state_dict()) == set(full_sd) - set(expected_ignored)
    for b, h, w, t in [(2, 16, 16, torch.tensor([10, 900])), (1, 11, 13, 250.5)]:
        sample, ctx = inputs(cfg, b, h, w, seed=h)
        with torch.no_grad():
            out = ours(sample, t, ctx)
        check("elastic.removed_vs_bypassed", out, ref_out(ref, sample, t, ctx))
    assert set(ours.last_executed_blocks) == set(elastic.all_block_names(pruned))


def test_elastic_added_attention_matches_diffusers_crossattn():
    """Attention gained by a DownBlock2D / UpBlock2D equals diffusers' CrossAttn block with the
    other layers' transformers bypassed; it uses the head count of that block."""
    cfg = small_sd15(attention_head_dim=[2, 2, 4, 8])
    blocks = elastic.full_block_list(cfg)
    blocks["down_blocks"][3][1]["attention"] = 1
    blocks["up_blocks"][0][2]["attention"] = 2
    ecfg = dict(cfg, elastic_blocks=blocks)
    assert "down_blocks.3.attentions.1" in elastic.block_names(ecfg)
    ref_cfg = dict(cfg, down_block_types=["CrossAttnDownBlock2D"] * 4,
                   up_block_types=["CrossAttnUpBlock2D"] * 4,
                   reverse_transformer_layers_per_block=[[2, 2, 2], [1, 1, 1], [1, 1, 1], [1, 1, 1]],
                   transformer_layers_per_block=[1, 1, 1, 1])
    ref = ref_unet(ref_cfg, seed=5)
    assert ref.down_blocks[3].attentions[1].transformer_blocks[0].attn1.heads == 8
    bypass = ["down_blocks.3.attentions.0", "up_blocks.0.attentions.0", "up_blocks.0.attentions.1"]
    full_sd = ref.state_dict()
    _bypass(ref, bypass, elastic.resolve_unet_config(ref_cfg))
    ours = UNet2DConditionModel(ecfg).eval()
    ours.load_pruned_state_dict(full_sd)
    sample, ctx = inputs(cfg, 1, 16, 16, seed=9)
    with torch.no_grad():
        check("elastic.added_attention", ours(sample, 77, ctx), ref_out(ref, sample, 77, ctx))


def test_block_helpers():
    cfg = small_sd15(block_out_channels=[16, 32, 32, 32])
    full = elastic.full_block_list(cfg)
    assert elastic.validate_block_list(cfg) == full
    assert full["down_blocks"][0] == [{"resnet": True, "attention": 1}] * 2
    assert full["down_blocks"][3] == [{"resnet": True, "attention": 0}] * 2
    assert full["mid_block"] == {"resnets": [True, True], "attention": 1}
    assert [len(x) for x in full["up_blocks"]] == [3, 3, 3, 3]
    names = elastic.block_names(cfg)
    # down_blocks.1.resnets.0 changes 16 -> 32; up_blocks.2.resnets.0 maps 32 -> 32 (allowed);
    # up_blocks.3.resnets.0 maps 32 -> 16 (fixed)
    assert "down_blocks.1.resnets.0" not in names and "down_blocks.0.resnets.0" in names
    assert "up_blocks.3.resnets.0" not in names and "up_blocks.2.resnets.0" in names
    assert names[:4] == ["down_blocks.0.resnets.0", "down_blocks.0.attentions.0",
                         "down_blocks.0.resnets.1", "down_blocks.0.attentions.1"]
    assert ["mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1"] == \
        [n for n in names if n.startswith("mid")]
    # down 4+3+4+2, mid 3, up 3+6+6+5
    assert len(names) == 36 and len(set(names)) == len(names)
    assert set(elastic.all_block_names(cfg)) - set(names) == {"down_blocks.1.resnets.0", "up_blocks.3.resnets.0"}
    new = elastic.with_blocks_removed(cfg, ["down_blocks.0.attentions.1", "mid_block.resnets.0"])
    assert "elastic_blocks" not in cfg  # input untouched
    assert new["elastic_blocks"]["down_blocks"][0][1] == {"resnet": True, "attention": 0}
    assert new["elastic_blocks"]["mid_block"]["resnets"] == [False, True]
    assert set(elastic.block_names(new)) == set(names) - {"down_blocks.0.attentions.1", "mid_block.resnets.0"}
    model = UNet2DConditionModel(new)
    assert not any(k.startswith(("down_blocks.0.attentions.1.", "mid_block.resnets.0."))
                   for k in model.state_dict())
    assert any(k.startswith("mid_block.resnets.1.") for k in model.state_dict())
    # mid_block_type null
    assert elastic.full_block_list(dict(cfg, mid_block_type=None))["mid_block"] is None


def test_docs_example_is_valid():
    text = (REPO / "docs" / "elastic_blocks.md").read_text()
    m = re.search(r'```json\n"elastic_blocks": (\{.*?\n\})\n```', text, re.S)
    assert m, "schema example not found in docs/elastic_blocks.md"
    blocks = json.loads(m.group(1))
    cfg = {"elastic_blocks": blocks}  # diffusers defaults = SD-v1.5 topology
    norm = elastic.validate_block_list(cfg)
    assert norm["down_blocks"][1][1]["resnet"] is False
    assert "down_blocks.1.resnets.1" not in elastic.block_names(cfg)


BAD_LISTS = [
    (lambda b: b["down_blocks"][1][0].update(resnet=False), "changes channels"),
    (lambda b: b["up_blocks"][3][0].update(resnet=False), "can be removed only"),
    (lambda b: b["down_blocks"].pop(), "expected a list of 4"),
    (lambda b: b["down_blocks"][0].pop(), "expected 2 layer entries"),
    (lambda b: b["up_blocks"][1].pop(), "expected 3 layer entries"),
    (lambda b: b["down_blocks"][0][0].update(resnet=1), "true/false"),
    (lambda b: b["down_blocks"][0][0].update(attention=-1), "count >= 0"),
    (lambda b: b["down_blocks"][0][0].update(attention=True), "count >= 0"),
    (lambda b: b["down_blocks"][0][0].update(extra=1), "unknown keys"),
    (lambda b: b["down_blocks"][0][0].pop("attention"), "required"),
    (lambda b: b.update(mid_block=None), "mid_block: required"),
    (lambda b: b["mid_block"].update(resnets=[True]), "two booleans"),
    (lambda b: b["mid_block"].update(attention=1.0), "count >= 0"),
    (lambda b: b["up_blocks"][2][0].update(attention=65), "exceed the limit"),
    (lambda b: b.update(extra={}), "unknown keys"),
    (lambda b: b["down_blocks"][0].__setitem__(0, [True, 1]), "expected an object"),
    (lambda b: b.__setitem__("up_blocks", "all"), "expected a list of 4"),
]


@pytest.mark.parametrize("mutate,msg", BAD_LISTS)
def test_invalid_block_lists(mutate, msg):
    cfg = small_sd15(block_out_channels=[16, 32, 32, 32])
    blocks = elastic.full_block_list(cfg)
    mutate(blocks)
    bad = dict(cfg, elastic_blocks=blocks)
    with pytest.raises(ValueError, match=re.escape(msg)):
        elastic.validate_block_list(bad)
    with pytest.raises(ValueError):
        UNet2DConditionModel(bad)
    with pytest.raises(ValueError):
        elastic.block_names(bad)


def test_added_attention_needs_divisible_heads():
    cfg = small_sd15(block_out_channels=[16, 32, 32, 32], attention_head_dim=[4, 4, 4, 3], mid_block_type=None)
    blocks = elastic.full_block_list(cfg)
    elastic.validate_block_list(dict(cfg, elastic_blocks=blocks))  # DownBlock2D: heads unused
    blocks["down_blocks"][3][0]["attention"] = 1
    with pytest.raises(ValueError, match="not divisible by 3"):
        elastic.validate_block_list(dict(cfg, elastic_blocks=blocks))
    no_cross = small_sd15(down_block_types=["DownBlock2D"] * 4, up_block_types=["UpBlock2D"] * 4,
                          mid_block_type=None, cross_attention_dim=None)
    blocks = elastic.full_block_list(no_cross)
    blocks["up_blocks"][0][0]["attention"] = 1
    with pytest.raises(ValueError, match="cross_attention_dim"):
        elastic.validate_block_list(dict(no_cross, elastic_blocks=blocks))


def test_invalid_removals_and_configs():
    cfg = small_sd15(block_out_channels=[16, 32, 32, 32])
    with pytest.raises(ValueError, match="cannot remove"):
        elastic.with_blocks_removed(cfg, ["down_blocks.1.resnets.0"])
    with pytest.raises(ValueError, match="cannot remove"):
        elastic.with_blocks_removed(cfg, ["down_blocks.3.attentions.0"])  # DownBlock2D has none
    once = elastic.with_blocks_removed(cfg, ["down_blocks.0.attentions.0"])
    with pytest.raises(ValueError, match="cannot remove"):
        elastic.with_blocks_removed(once, ["down_blocks.0.attentions.0"])
    with pytest.raises(ValueError, match="malformed"):
        elastic.with_blocks_removed(cfg, ["down_blocks.x.resnets.0"])
    with pytest.raises(ValueError, match="must be null"):
        elastic.validate_block_list(dict(cfg, mid_block_type=None, elastic_blocks=elastic.full_block_list(cfg)))
    with pytest.raises(ValueError, match="unsupported down block"):
        UNet2DConditionModel(dict(cfg, down_block_types=["AttnDownBlock2D"] * 4))
    with pytest.raises(ValueError, match="not supported"):
        UNet2DConditionModel(dict(cfg, class_embed_type="timestep"))
    with pytest.raises(ValueError, match="divisible"):
        UNet2DConditionModel(dict(cfg, norm_num_groups=5))
    with pytest.raises(ValueError, match="expected 4"):
        UNet2DConditionModel(dict(cfg, layers_per_block=[1, 2]))
    with pytest.raises(TypeError):
        UNet2DConditionModel(dict(cfg, block_out_channels=[16, 32, 32, "32"]))
    with pytest.raises(TypeError):
        UNet2DConditionModel(["not", "a", "dict"])


# ----------------------------------------------------------------------------- stochastic forward propagation
TINY = dict(block_out_channels=[8, 16], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=2, cross_attention_dim=8,
            attention_head_dim=2, norm_num_groups=4)


def test_block_drop_rates_and_reproducibility():
    model = randomize_(UNet2DConditionModel(TINY), 3).train()
    names = model.droppable_blocks
    assert "down_blocks.1.resnets.0" not in names and "up_blocks.1.resnets.0" not in names
    always, never = "down_blocks.0.attentions.1", "mid_block.resnets.1"
    model.set_block_drop(resnet_p=0.3, attention_p=0.6, probs={always: 1.0, never: 0.0})
    sample, ctx = inputs(TINY, 1, 4, 4, seed=1, tokens=2)
    n = 300
    counts = dict.fromkeys(names, 0)
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for _ in range(n):
            model(sample, 10, ctx, generator=gen)
            for name in model.last_dropped_blocks:
                counts[name] += 1
            assert set(model.last_dropped_blocks).isdisjoint(model.last_executed_blocks)
            assert "down_blocks.1.resnets.0" in model.last_executed_blocks
    for name in names:
        p = 1.0 if name == always else 0.0 if name == never else 0.3 if ".resnets." in name else 0.6
        tol = 5 * math.sqrt(p * (1 - p) / n) + 1e-9
        assert abs(counts[name] / n - p) <= tol, (name, counts[name] / n, p)
    # reproducible from a seeded generator, also when given to set_block_drop
    def draws(seed, via_set):
        model.set_block_drop(resnet_p=0.5, attention_p=0.5,
                             generator=torch.Generator().manual_seed(seed) if via_set else None)
        g = None if via_set else torch.Generator().manual_seed(seed)
        seq = []
        with torch.no_grad():
            for _ in range(5):
                model(sample, 10, ctx, generator=g)
                seq.append(model.last_dropped_blocks)
        return seq
    assert draws(7, False) == draws(7, False) == draws(7, True)
    assert draws(7, False) != draws(8, False)
    # evaluation mode never drops
    model.eval()
    with torch.no_grad():
        model(sample, 10, ctx)
    assert model.last_dropped_blocks == () and set(model.last_executed_blocks) == set(elastic.all_block_names(TINY))


def test_dropped_forward_equals_removed_architecture():
    model = randomize_(UNet2DConditionModel(TINY), 4).train()
    model.set_block_drop(resnet_p=0.5, attention_p=0.5)
    sample, ctx = inputs(TINY, 2, 6, 5, seed=2, tokens=3)
    gen = torch.Generator().manual_seed(99)
    seen = 0
    for _ in range(4):
        out = model(sample, torch.tensor([3, 700]), ctx, generator=gen)
        dropped = list(model.last_dropped_blocks)
        seen += len(dropped)
        pruned = UNet2DConditionModel(elastic.with_blocks_removed(TINY, dropped)).eval()
        pruned.load_pruned_state_dict(model.state_dict())
        with torch.no_grad():
            check("elastic.drop_vs_removed", out, pruned(sample, torch.tensor([3, 700]), ctx), rel=1e-5)
        out.square().mean().backward()  # gradients flow through the kept blocks
    assert seen > 0
    grads = {k: p.grad for k, p in model.named_parameters()}
    assert grads["conv_in.weight"] is not None and torch.isfinite(grads["conv_in.weight"]).all()
    with pytest.raises(ValueError, match="not a droppable"):
        model.set_block_drop(probs={"down_blocks.1.resnets.0": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.set_block_drop(resnet_p=1.5)
    with pytest.raises(TypeError):
        model.set_block_drop(attention_p="0.1")


def test_gradient_checkpointing_same_result():
    model = randomize_(UNet2DConditionModel(TINY), 8)
    sample, ctx = inputs(TINY, 1, 8, 8, seed=3, tokens=2)
    out1 = model(sample, 5, ctx)
    out1.sum().backward()
    g1 = model.conv_in.weight.grad.clone()
    model.zero_grad()
    model.enable_gradient_checkpointing()
    out2 = model(sample, 5, ctx)
    out2.sum().backward()
    check("unet.checkpointing", out2, out1, rel=1e-6)
    check("unet.checkpointing.grad", model.conv_in.weight.grad, g1, rel=1e-5)


# ----------------------------------------------------------------------------- UNet I/O and input validation
def test_unet_save_load_roundtrip_and_diffusers_reads_it(tmp_path):
    cfg, _, _ = TOPOLOGIES["two_level"]
    model = randomize_(UNet2DConditionModel(cfg), 2).eval()
    model.save_pretrained(tmp_path / "full")
    assert json.loads((tmp_path / "full" / "config.json").read_text())["_class_name"] == "UNet2DConditionModel"
    back = snn.load_safetensors(tmp_path / "full").eval()
    ref = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "full").eval()
    sample, ctx = inputs(cfg, 1, 8, 8, seed=4)
    with torch.no_grad():
        out = model(sample, 3, ctx)
        check("unet.roundtrip", back(sample, 3, ctx), out, rel=0)
    check("unet.saved_read_by_diffusers", out, ref_out(ref, sample, 3, ctx))
    # an elastic model keeps its block list
    pruned = UNet2DConditionModel(elastic.with_blocks_removed(cfg, ["up_blocks.1.attentions.1"]))
    pruned.save_pretrained(tmp_path / "pruned")
    again = UNet2DConditionModel.from_pretrained(tmp_path / "pruned")
    assert again.block_list == pruned.block_list
    assert again.block_list["up_blocks"][1][1]["attention"] == 0
    # weights that do not fit the config
    with pytest.raises(ValueError, match="unexpected"):
        UNet2DConditionModel.from_pretrained(tmp_path / "full", config=pruned.config)
    via_cfg = snn.from_config(tmp_path / "full" / "config.json")
    assert isinstance(via_cfg, UNet2DConditionModel)


def test_malformed_files(tmp_path):
    cfg, _, _ = TOPOLOGIES["two_level"]
    UNet2DConditionModel(cfg).save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError):
        snn.load_safetensors(tmp_path)
    weights.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(OSError):
        snn.load_safetensors(tmp_path)
    weights.write_bytes(b"\x00" * 3)
    with pytest.raises(OSError):
        snn.load_safetensors(tmp_path)
    weights.unlink()
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match="pickled"):
        snn.load_safetensors(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="malformed JSON"):
        snn.from_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(TypeError):
        snn.from_config(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="cannot tell"):
        snn.from_config(tmp_path)
    with pytest.raises(FileNotFoundError):
        snn.from_config(tmp_path / "missing")
    with pytest.raises(TypeError):
        snn.from_config(42)


def test_unet_bad_inputs():
    model = UNet2DConditionModel(TINY).eval()
    sample, ctx = inputs(TINY, 2, 8, 8, seed=0, tokens=3)
    with torch.no_grad():
        with pytest.raises(ValueError, match="channels"):
            model(sample[:, :3], 1, ctx)
        with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
            model(sample[0], 1, ctx)
        with pytest.raises(TypeError):
            model(sample.long(), 1, ctx)
        with pytest.raises(TypeError):
            model(sample.numpy(), 1, ctx)
        bad = sample.clone()
        bad[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            model(bad, 1, ctx)
        with pytest.raises(ValueError, match="NaN"):
            model(sample, float("nan"), ctx)
        with pytest.raises(ValueError, match="entries for a batch"):
            model(sample, torch.tensor([1, 2, 3]), ctx)
        with pytest.raises(ValueError, match="scalar or a 1-D"):
            model(sample, torch.ones(2, 2), ctx)
        with pytest.raises(TypeError):
            model(sample, "1", ctx)
        with pytest.raises(TypeError):
            model(sample, True, ctx)
        with pytest.raises(ValueError, match="width"):
            model(sample, 1, ctx[..., :5])
        with pytest.raises(ValueError, match="batch"):
            model(sample, 1, ctx[:1])
        with pytest.raises(ValueError, match="required"):
            model(sample, 1, None)
        with pytest.raises(ValueError, match="absurd"):
            model(torch.zeros(1, 4, 1, 20000), 1, ctx[:1])
        out = model(sample, np.int64(5), ctx)  # numpy scalars are accepted
        assert out.shape == sample.shape


# ----------------------------------------------------------------------------- VAE
VAE_CFG = dict(block_out_channels=[8, 16, 16], down_block_types=["DownEncoderBlock2D"] * 3,
               up_block_types=["UpDecoderBlock2D"] * 3, layers_per_block=2, latent_channels=4,
               norm_num_groups=4, sample_size=32)


def test_vae_matches_diffusers():
    ref = randomize_(diffusers.AutoencoderKL(**VAE_CFG), 31).eval()
    ours = AutoencoderKL(VAE_CFG).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    g = torch.Generator().manual_seed(0)
    for h, w in [(32, 24), (19, 13)]:
        x = torch.rand(2, 3, h, w, generator=g) * 2 - 1
        with torch.no_grad():
            post = ref.encode(x).latent_dist
            mean, logvar = ours.encode(x)
        check("vae.encode.mean", mean, post.mean)
        check("vae.encode.logvar", logvar, post.logvar)
    z = torch.randn(1, 4, 5, 7, generator=g)
    with torch.no_grad():
        check("vae.decode", ours.decode(z), ref.decode(z).sample)


def test_vae_reduced_decoder_matches_diffusers_decoder():
    try:
        from diffusers.models.autoencoders.vae import Decoder as RefDecoder
    except ImportError:  # diffusers < 0.25
        from diffusers.models.vae import Decoder as RefDecoder

    cfg = dict(VAE_CFG, decoder_block_out_channels=[4, 8, 12], decoder_layers_per_block=1)
    ours = AutoencoderKL(cfg).eval()
    assert ours.decoder.up_blocks[0].resnets[0].conv1.out_channels == 12
    ref_dec = randomize_(RefDecoder(in_channels=4, out_channels=3, up_block_types=["UpDecoderBlock2D"] * 3,
                                    block_out_channels=[4, 8, 12], layers_per_block=1, norm_num_groups=4), 2).eval()
    ours.decoder.load_state_dict(ref_dec.state_dict(), strict=True)
    randomize_(ours.post_quant_conv, 3)
    z = torch.randn(1, 4, 6, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        check("vae.reduced_decoder", ours.decode(z), ref_dec(ours.post_quant_conv(z)))
    with pytest.raises(ValueError):
        AutoencoderKL(dict(VAE_CFG, decoder_block_out_channels=[4, 8]))
    with pytest.raises(ValueError):
        AutoencoderKL(dict(VAE_CFG, decoder_block_out_channels=[4, 8, 10]))


@pytest.mark.parametrize("folder,npz", [("vae_sd_small", "vae_sd_small"), ("sd_tiny/vae", "vae_tiny")])
def test_vae_golden(golden_dir, folder, npz):
    model = snn.load_safetensors(golden_dir / folder)
    assert isinstance(model, AutoencoderKL)
    d = np.load(golden_dir / f"{npz}.npz")
    with torch.no_grad():
        check(f"golden.{npz}.decode", model.decode(torch.from_numpy(d["decode__z"])), d["decode__sample"])
        for case in ("encode", "encode_odd"):
            if f"{case}__x" not in d.files:
                continue
            mean, logvar = model.encode(torch.from_numpy(d[f"{case}__x"]))
            check(f"golden.{npz}.{case}.mean", mean, d[f"{case}__mean"])
            check(f"golden.{npz}.{case}.std", torch.exp(0.5 * logvar), d[f"{case}__std"])
            if f"{case}__logvar" in d.files:
                check(f"golden.{npz}.{case}.logvar", logvar, d[f"{case}__logvar"])


def test_vae_io_and_bad_inputs(tmp_path):
    model = randomize_(AutoencoderKL(VAE_CFG), 5).eval()
    model.save_pretrained(tmp_path)
    back = snn.load_safetensors(tmp_path)
    z = torch.randn(1, 4, 3, 3)
    with torch.no_grad():
        check("vae.roundtrip", back.decode(z), model.decode(z), rel=0)
    mean = torch.zeros(1, 4, 2, 2)
    s = AutoencoderKL.sample_latent(mean, torch.full_like(mean, math.log(4.0)), torch.Generator().manual_seed(0))
    n = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    check("vae.sample_latent", s, 2 * n, rel=1e-6)
    with pytest.raises(ValueError):
        model.encode(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError):
        model.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(TypeError):
        model.decode(torch.zeros(1, 4, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="NaN"):
        model.decode(torch.full((1, 4, 2, 2), float("inf")))
    with pytest.raises(ValueError):
        AutoencoderKL(dict(VAE_CFG, down_block_types=["DownBlock2D"] * 3))
    with pytest.raises(ValueError):
        AutoencoderKL(dict(VAE_CFG, norm_num_groups=3))


def test_elastic_module_is_torch_free():
    code = ("import sys, snapfusion.nn.elastic as e; "
            "e.block_names({}); assert 'torch' not in sys.modules, 'torch imported'")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO, timeout=60)
