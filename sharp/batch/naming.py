"""Deterministic names: a row's key (its `id` column, else its manifest position) and the file names
of its outputs, so reruns and `--resume` find the same files."""
from __future__ import annotations

import hashlib
import json
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def slug(text: str, limit: int = 60) -> str:
    s = _UNSAFE.sub("-", str(text)).strip("-.")
    return s[:limit] or "x"


def row_key(index: int, values: dict) -> str:
    """`id` column (made file-name safe), else the 5-digit manifest position."""
    return slug(values["id"], 80) if values.get("id") not in (None, "") else f"{index:05d}"


def output_name(key: str, node_title: str, index: int, server_filename: str) -> str:
    """<row key>_<node title>_<nn>.<ext of the server's file>, e.g. 00007_Save-SR_00.png"""
    ext = server_filename.rsplit(".", 1)[-1].lower() if "." in server_filename else "png"
    return f"{key}_{slug(node_title, 40)}_{index:02d}.{slug(ext, 8)}"


def canonical_hash(obj) -> str:
    """sha256 of the canonical JSON of obj (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
