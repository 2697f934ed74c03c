"""Original single-file SD-v1.x checkpoints (LDM names) load and equal the diffusers folder.

The test writes an LDM-layout file from the golden tiny pipeline. Its name mapping is checked
independently: diffusers' own LDM converters must turn the file back into the original
diffusers state dict, tensor for tensor.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from snapfusion import Pipeline, _engine
from snapfusion.convert.safetensors_io import save_safetensors

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _read(path: Path) -> dict[str, np.ndarray]:
    with _engine.SafeTensors(path) as st:
        return {k: np.array(st[k]) for k in st.keys()}


def unet_to_ldm(name: str, layers: int, attn_up: set[int]) -> str:
    """diffusers UNet name -> LDM name (written for this test, checked by diffusers)."""
    simple = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.",
              "time_embedding.linear_2.": "time_embed.2.", "conv_norm_out.": "out.0.",
              "conv_out.": "out.2."}
    for a, b in simple.items():
        if name.startswith(a):
            return b + name[len(a):]

    def res(rest: str) -> str:
        head, tail = rest.split(".", 1)
        return f"{RESNET[head]}.{tail}"

    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", name):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        k = 1 + i * (layers + 1) + j
        return f"input_blocks.{k}.0.{res(rest)}" if kind == "resnets" else \
            f"input_blocks.{k}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", name):
        return f"input_blocks.{1 + int(m[1]) * (layers + 1) + layers}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d)\.(.*)", name):
        if m[1] == "attentions":
            return f"middle_block.1.{m[3]}"
        return f"middle_block.{2 * int(m[2])}.{res(m[3])}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", name):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        k = i * (layers + 1) + j
        return f"output_blocks.{k}.0.{res(rest)}" if kind == "resnets" else \
            f"output_blocks.{k}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", name):
        i = int(m[1])
        return f"output_blocks.{i * (layers + 1) + layers}.{2 if i in attn_up else 1}.conv.{m[2]}"
    raise AssertionError(name)


def vae_to_ldm(name: str, levels: int) -> str:
    """diffusers VAE name -> LDM name."""
    if name.startswith(("quant_conv.", "post_quant_conv.")):
        return name
    part, rest = name.split(".", 1)
    rest = rest.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
    if m := re.match(r"mid_block\.resnets\.(\d)\.(.*)", rest):
        return f"{part}.mid.block_{int(m[1]) + 1}.{m[2]}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", rest):
        tail = m[1]
        for a, b in (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                     ("to_out.0.", "proj_out.")):
            if tail.startswith(a):
                tail = b + tail[len(a):]
        return f"{part}.mid.attn_1.{tail}"
    if m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest):
        return f"{part}.down.{m[1]}.block.{m[2]}.{m[3]}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.(.*)", rest):
        return f"{part}.down.{m[1]}.downsample.{m[2]}"
    if m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest):
        return f"{part}.up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", rest):
        return f"{part}.up.{levels - 1 - int(m[1])}.upsample.{m[2]}"
    return f"{part}.{rest}"


@pytest.fixture(scope="module")
def ldm_file(golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import json

    root = golden_dir / "sd_tiny"
    ucfg = json.loads((root / "unet/config.json").read_text())
    vcfg = json.loads((root / "vae/config.json").read_text())
    layers = ucfg["layers_per_block"]
    attn_up = {i for i, t in enumerate(ucfg["up_block_types"]) if t.startswith("CrossAttn")}
    unet = _read(root / "unet/diffusion_pytorch_model.safetensors")
    vae = _read(root / "vae/diffusion_pytorch_model.safetensors")
    text = _read(root / "text_encoder/model.safetensors")
    state: dict[str, np.ndarray] = {}
    for k, v in unet.items():
        state["model.diffusion_model." + unet_to_ldm(k, layers, attn_up)] = v
    levels = len(vcfg["block_out_channels"])
    for k, v in vae.items():
        ldm = vae_to_ldm(k, levels)
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and v.ndim == 2:
            v = v[:, :, None, None]  # LDM stores the VAE attention projections as 1x1 convs
        state["first_stage_model." + ldm] = v
    for k, v in text.items():
        state["cond_stage_model.transformer." + k] = v

    # the mapping is checked by diffusers' own converters
    import torch
    from diffusers.loaders import single_file_utils as sfu

    ckpt = {k: torch.from_numpy(v) for k, v in state.items()}
    back = sfu.convert_ldm_unet_checkpoint(ckpt, ucfg)
    assert set(back) == set(unet)
    for k in unet:
        np.testing.assert_array_equal(back[k].numpy(), unet[k])
    back = sfu.convert_ldm_vae_checkpoint(ckpt, vcfg)
    assert set(back) == set(vae)
    for k in vae:
        np.testing.assert_array_equal(back[k].numpy().reshape(vae[k].shape), vae[k])

    out = tmp_path_factory.mktemp("single") / "sd_tiny_ldm.safetensors"
    save_safetensors(out, state)
    shutil.copytree(root / "tokenizer", out.parent / "tokenizer")
    # head counts are not in the weights: the tiny model departs from SD-1.x's, so say so
    for comp, cfg in (("unet", {"attention_head_dim": 8}),
                      ("text_encoder", {"num_attention_heads": 4})):
        (out.parent / comp).mkdir()
        (out.parent / comp / "config.json").write_text(json.dumps(cfg))
    return out


def test_single_file_equals_folder(golden_dir: Path, ldm_file: Path) -> None:
    _engine.set_num_threads(2)
    ref = Pipeline.from_pretrained(golden_dir / "sd_tiny")
    pipe = Pipeline.from_pretrained(ldm_file)
    for key in ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
                "cross_attention_dim"):
        assert pipe.unet.config[key] == ref.unet.config[key], key
    rng = np.random.default_rng(0)
    ids = ref.tokenizer(["a photo of a cat", ""])
    np.testing.assert_array_equal(pipe.text_encoder(ids), ref.text_encoder(ids))
    ctx = ref.text_encoder(ids)
    x = rng.standard_normal((2, 4, 16, 24)).astype(np.float32)
    np.testing.assert_array_equal(pipe.unet(x, 500, ctx), ref.unet(x, 500, ctx))
    np.testing.assert_array_equal(pipe.vae.decode(x[:1]), ref.vae.decode(x[:1]))
    img = rng.uniform(-1, 1, (1, 3, 32, 48)).astype(np.float32)
    np.testing.assert_array_equal(pipe.vae.encode(img).mean, ref.vae.encode(img).mean)
    a = pipe("a red circle", num_inference_steps=3, seed=1, height=32, width=48,
             output_type="np").images
    b = ref("a red circle", num_inference_steps=3, seed=1, height=32, width=48,
            output_type="np").images
    np.testing.assert_array_equal(a, b)
    lean = Pipeline.from_pretrained(ldm_file, low_memory=True)  # single files too
    assert lean.unload_models and not lean.unet.loaded
    np.testing.assert_array_equal(lean("a red circle", num_inference_steps=3, seed=1, height=32,
                                       width=48, output_type="np").images, b)


def test_single_file_errors(ldm_file: Path, tmp_path: Path) -> None:
    # no tokenizer next to the file
    lonely = tmp_path / "lonely.safetensors"
    shutil.copy(ldm_file, lonely)
    with pytest.raises(OSError, match="tokenizer"):
        Pipeline.from_pretrained(lonely)
    # pickles are refused unless asked for
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04not opened")
    with pytest.raises(ValueError, match="allow_pickle"):
        Pipeline.from_pretrained(ckpt)
    # a file that is not a diffusion checkpoint
    other = tmp_path / "other.safetensors"
    save_safetensors(other, {"weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="UNet"):
        Pipeline.from_pretrained(other)
