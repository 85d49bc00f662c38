"""Batch runs of an API-format ComfyUI workflow over a manifest, on many ComfyUI servers (Ray).

One concern per module: `manifest` (rows, `--set`, column -> input bindings), `grid` (the SHARP
prompt x size x seed manifest), `schema` (/object_info specs: coercion and validation), `jobs`
(row -> prompt, names, hashes), `client` (ComfyUI's HTTP protocol), `worker` (one prompt on one
server), `launch` (a supervised ComfyUI process), `results` (images, sidecars, results.jsonl,
resume), `progress`, `runner` (the Ray driver). Nothing here imports ComfyUI: it speaks HTTP.
Ray is needed only by `runner` (the optional extra `comfyui-sharp[scale]`).
"""
