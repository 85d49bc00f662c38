"""A trivial workflow the ComfyUI protocol stand-in (comfy_protocol_standin.py) can run, and
manifests for it, shared by the `sharp batch` tests and benchmark."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
from PIL import Image

WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0},
          "_meta": {"title": "Canvas"}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "canvas"},
          "_meta": {"title": "Save canvas"}},
    "3": {"class_type": "LoadImage", "inputs": {"image": "missing.png"}, "_meta": {"title": "Photo"}},
    "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}, "_meta": {"title": "Invert"}},
    "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "inverted"},
          "_meta": {"title": "Save inverted"}},
}


def write_workflow(folder: str, workflow: dict | None = None) -> str:
    path = os.path.join(folder, "workflow_api.json")
    with open(path, "w") as fh:
        json.dump(workflow or WORKFLOW, fh)
    return path


def write_photos(folder: str, n: int) -> list[str]:
    """n small distinct RGB PNGs (value 10 * i), relative names in `folder`."""
    os.makedirs(folder, exist_ok=True)
    names = []
    for i in range(n):
        name = f"photo_{i}.png"
        Image.fromarray(np.full((6, 5, 3), 10 * i, np.uint8)).save(os.path.join(folder, name))
        names.append(name)
    return names


def write_manifest(folder: str, n: int, bad_size_rows=(), photos: int = 3) -> str:
    """CSV: id, Canvas.width/height/color, Photo.image (a local file, uploaded). Rows in
    bad_size_rows ask for a canvas the stand-in cannot allocate (an execution error)."""
    names = write_photos(folder, photos)
    path = os.path.join(folder, "jobs.csv")
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "Canvas.width", "Canvas.height", "Canvas.color", "Photo.image", "note"])
        for i in range(n):
            side = 2000 if i in bad_size_rows else 8 + i
            w.writerow([f"job{i:02d}", side, side, i * 1000, names[i % len(names)], f"row {i}"])
    return path


def image_size(path: str) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size
