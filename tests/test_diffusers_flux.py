"""diffusers Flux folder -> Flux (BFL) state dict (sharp.diffusers_flux) and `python -m sharp convert`."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from flux_fixtures import diffusers_config, tiny_diffusers_flux, write_diffusers_folder
from sharp import diffusers_flux as df

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def expected_bfl_keys(depth=1, depth_single=1, guidance=True):
    """The key set of a BFL Flux checkpoint, written out by hand from the BFL layout."""
    keys = set()
    top = ["img_in", "txt_in", "time_in.in_layer", "time_in.out_layer", "vector_in.in_layer",
           "vector_in.out_layer", "final_layer.linear", "final_layer.adaLN_modulation.1"]
    if guidance:
        top += ["guidance_in.in_layer", "guidance_in.out_layer"]
    for m in top:
        keys |= {f"{m}.weight", f"{m}.bias"}
    for i in range(depth):
        for m in ("img_mod.lin", "txt_mod.lin", "img_attn.qkv", "txt_attn.qkv", "img_attn.proj", "txt_attn.proj",
                  "img_mlp.0", "img_mlp.2", "txt_mlp.0", "txt_mlp.2"):
            keys |= {f"double_blocks.{i}.{m}.weight", f"double_blocks.{i}.{m}.bias"}
        for side in ("img", "txt"):
            keys |= {f"double_blocks.{i}.{side}_attn.norm.query_norm.scale",
                     f"double_blocks.{i}.{side}_attn.norm.key_norm.scale"}
    for i in range(depth_single):
        for m in ("modulation.lin", "linear1", "linear2"):
            keys |= {f"single_blocks.{i}.{m}.weight", f"single_blocks.{i}.{m}.bias"}
        keys |= {f"single_blocks.{i}.norm.query_norm.scale", f"single_blocks.{i}.norm.key_norm.scale"}
    return keys


@pytest.fixture()
def sd():
    return tiny_diffusers_flux(depth=2, depth_single=2)


def test_key_set_and_fusions(sd):
    out = df.convert_state_dict(sd.items())
    assert set(out) == expected_bfl_keys(2, 2)
    d = "transformer_blocks.1.attn."
    assert torch.equal(out["double_blocks.1.img_attn.qkv.weight"],
                       torch.cat([sd[d + "to_q.weight"], sd[d + "to_k.weight"], sd[d + "to_v.weight"]]))
    assert torch.equal(out["double_blocks.1.txt_attn.qkv.bias"],
                       torch.cat([sd[d + "add_q_proj.bias"], sd[d + "add_k_proj.bias"], sd[d + "add_v_proj.bias"]]))
    s = "single_transformer_blocks.0."
    assert torch.equal(out["single_blocks.0.linear1.weight"],
                       torch.cat([sd[s + "attn.to_q.weight"], sd[s + "attn.to_k.weight"],
                                  sd[s + "attn.to_v.weight"], sd[s + "proj_mlp.weight"]]))
    assert torch.equal(out["single_blocks.0.linear2.weight"], sd[s + "proj_out.weight"])
    assert torch.equal(out["double_blocks.0.txt_attn.norm.key_norm.scale"],
                       sd["transformer_blocks.0.attn.norm_added_k.weight"])
    assert torch.equal(out["img_in.weight"], sd["x_embedder.weight"])
    assert torch.equal(out["time_in.out_layer.bias"], sd["time_text_embed.timestep_embedder.linear_2.bias"])
    # diffusers' final norm is (scale, shift); BFL's is (shift, scale)
    H = sd["x_embedder.weight"].shape[0]
    w = sd["norm_out.linear.weight"]
    assert torch.equal(out["final_layer.adaLN_modulation.1.weight"][:H], w[H:])
    assert torch.equal(out["final_layer.adaLN_modulation.1.weight"][H:], w[:H])


def test_schnell_without_guidance():
    out = df.convert_state_dict(tiny_diffusers_flux(guidance=False).items())
    assert set(out) == expected_bfl_keys(guidance=False)


def test_two_shards_equal_single_file(tmp_path, sd):
    one = write_diffusers_folder(str(tmp_path / "one"), sd, shards=1)
    two = write_diffusers_folder(str(tmp_path / "two"), sd, shards=2)
    idx = json.load(open(os.path.join(two, "transformer", "diffusion_pytorch_model.safetensors.index.json")))
    q = "transformer_blocks.0.attn.to_q.weight"
    k = "transformer_blocks.0.attn.to_k.weight"
    assert idx["weight_map"][q] != idx["weight_map"][k]  # a fusion spans both shards
    a, b = df.convert_transformer(one), df.convert_transformer(two)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    # a bare transformer folder works as well
    c = df.convert_transformer(os.path.join(two, "transformer"))
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_dtype_cast(tmp_path, sd):
    folder = write_diffusers_folder(str(tmp_path / "f"), sd)
    out = df.convert_transformer(folder, dtype=torch.bfloat16)
    assert {v.dtype for v in out.values()} == {torch.bfloat16}


def _tdir(folder):
    return os.path.join(folder, "transformer")


def test_missing_shard_names_file(tmp_path, sd):
    folder = write_diffusers_folder(str(tmp_path / "f"), sd)
    victim = os.path.join(_tdir(folder), "diffusion_pytorch_model-00002-of-00002.safetensors")
    os.remove(victim)
    with pytest.raises(df.DiffusersFolderError, match="00002-of-00002.safetensors: missing shard"):
        df.convert_transformer(folder)


def _map_in_index(folder: str, key: str, shard: str) -> None:
    """Rewrite the transformer's index JSON so that it maps `key` to `shard`."""
    path = os.path.join(_tdir(folder), "diffusion_pytorch_model.safetensors.index.json")
    with open(path) as fh:
        idx = json.load(fh)
    idx["weight_map"][key] = shard
    with open(path, "w") as fh:
        json.dump(idx, fh)


def test_index_naming_absent_file(tmp_path, sd):
    folder = write_diffusers_folder(str(tmp_path / "f"), sd)
    _map_in_index(folder, "proj_out.weight", "elsewhere.safetensors")
    with pytest.raises(df.DiffusersFolderError, match="elsewhere.safetensors"):
        df.convert_transformer(folder)


def test_index_key_not_in_shard(tmp_path, sd):
    folder = write_diffusers_folder(str(tmp_path / "f"), sd)
    _map_in_index(folder, "extra.weight", "diffusion_pytorch_model-00001-of-00002.safetensors")
    with pytest.raises(df.DiffusersFolderError, match="00001-of-00002.safetensors: lacks 1 tensor"):
        df.convert_transformer(folder)


def test_truncated_shard_names_file(tmp_path, sd):
    folder = write_diffusers_folder(str(tmp_path / "f"), sd)
    victim = os.path.join(_tdir(folder), "diffusion_pytorch_model-00001-of-00002.safetensors")
    data = open(victim, "rb").read()
    open(victim, "wb").write(data[: len(data) // 2])
    with pytest.raises(df.DiffusersFolderError, match="00001-of-00002.safetensors: cannot read"):
        df.convert_transformer(folder)


def test_not_flux(tmp_path, sd):
    cfg = diffusers_config()
    cfg["_class_name"] = "SD3Transformer2DModel"
    folder = write_diffusers_folder(str(tmp_path / "sd3"), sd, config=cfg)
    with pytest.raises(df.DiffusersFolderError, match="config.json: _class_name is 'SD3Transformer2DModel'"):
        df.convert_transformer(folder)
    bad = dict(sd)
    bad["pos_embed.proj.weight"] = torch.zeros(2, 2)
    folder = write_diffusers_folder(str(tmp_path / "odd"), bad)
    with pytest.raises(df.DiffusersFolderError, match="pos_embed.proj.weight"):
        df.convert_transformer(folder)
    partial = {k: v for k, v in sd.items() if ".to_v." not in k}
    with pytest.raises(df.DiffusersFolderError, match="incomplete q/k/v"):
        df.convert_state_dict(partial.items())


def test_pickle_only_refused(tmp_path):
    tdir = tmp_path / "p" / "transformer"
    tdir.mkdir(parents=True)
    (tdir / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(df.DiffusersFolderError, match="safetensors only"):
        df.convert_transformer(str(tmp_path / "p"))
    with pytest.raises(df.DiffusersFolderError, match="no such folder"):
        df.convert_transformer(str(tmp_path / "absent"))


def test_listing_finds_flux_folders(tmp_path, sd):
    write_diffusers_folder(str(tmp_path / "root" / "FLUX-RS"), sd)
    write_diffusers_folder(str(tmp_path / "root" / "sub" / "bare"), sd, pipeline=False)
    (tmp_path / "root" / "empty").mkdir()
    assert df.find_flux_folders([str(tmp_path / "root"), str(tmp_path / "nope")]) == ["FLUX-RS", "sub/bare"]
    comps = df.pipeline_components(str(tmp_path / "root" / "FLUX-RS"))
    assert comps["transformer"].endswith("transformer") and comps["vae"] is None


def test_cli_convert(tmp_path, sd):
    folder = write_diffusers_folder(str(tmp_path / "f"), sd)
    out = tmp_path / "flux.safetensors"
    cmd = [sys.executable, "-m", "sharp", "convert", folder, str(out)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    loaded = load_file(str(out))
    ref = df.convert_transformer(folder)
    assert set(loaded) == set(ref) and all(torch.equal(loaded[k], ref[k]) for k in ref)
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 2 and "--force" in again.stderr
    bad = subprocess.run([sys.executable, "-m", "sharp", "convert", str(tmp_path / "nope"), str(tmp_path / "x.safetensors")],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "no such folder" in bad.stderr


def test_streaming_keeps_no_second_copy():
    """Renamed tensors are passed through (no copy); q/k/v parts are dropped once fused, so at most one
    fusion group's parts are alive beside the output while reading."""
    import gc
    import weakref

    sd = tiny_diffusers_flux(depth=2, depth_single=2)
    order = sorted(sd, key=lambda k: (k.split(".")[:2], k))  # block by block, as shards usually are
    part_refs, plain_refs, peak = [], {}, [0]

    def stream():
        for k in order:
            t = sd[k].clone()
            target = df.map_key(k)
            if target[2] > 1:
                part_refs.append(weakref.ref(t))
            else:
                plain_refs[target[0]] = weakref.ref(t)
            gc.collect()
            peak[0] = max(peak[0], sum(r() is not None for r in part_refs))
            yield k, t
            del t

    out = df.convert_state_dict(stream())
    gc.collect()
    assert all(r() is None for r in part_refs)  # every q/k/v/mlp part was released after fusion
    assert all(out[k] is r() for k, r in plain_refs.items() if k != "final_layer.adaLN_modulation.1.weight"
               and k != "final_layer.adaLN_modulation.1.bias")  # renamed, not copied
    assert peak[0] <= 4 * 2  # weight + bias parts of one fusion group at most
