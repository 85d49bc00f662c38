"""Manifests (CSV or JSON Lines) and how their columns address workflow inputs.

A column named `NODE.INPUT` sets that input of the node whose `_meta.title` (or id, or unique
class_type) is NODE: `Prompt.text`, `KSampler.seed`, `LR.image`. Titles may contain dots: the input
name is what follows the last one. Columns without a dot (`id`, `note`, ...) are kept in the sidecar
but set nothing; `id` names the row's outputs. An empty CSV cell leaves the workflow's value.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    index: int          # 0-based position in the manifest
    values: dict        # column -> value, as read (CSV: strings)
    line: int           # line number in the file, for error messages


def read_manifest(path: str) -> list[Row]:
    """Rows of a .csv (header line) or .jsonl (one JSON object per line) manifest."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest {path} does not exist")
    ext = os.path.splitext(path)[1].lower()
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        if ext == ".csv":
            reader = csv.DictReader(fh)
            if not reader.fieldnames:
                raise ValueError(f"{path}: no header line (the column names, e.g. id,Prompt.text,KSampler.seed)")
            for values in reader:
                if None in values:
                    raise ValueError(f"{path}:{reader.line_num}: more cells than header columns")
                cleaned = {k.strip(): v for k, v in values.items() if v is not None and v != ""}
                rows.append(Row(len(rows), cleaned, reader.line_num))
        elif ext in (".jsonl", ".ndjson"):
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    values = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{n}: not JSON ({err.msg})") from None
                if not isinstance(values, dict):
                    raise ValueError(f"{path}:{n}: each line must be a JSON object, got {type(values).__name__}")
                rows.append(Row(len(rows), values, n))
        else:
            raise ValueError(f"manifest {path}: unknown format {ext!r} (use .csv or .jsonl)")
    if not rows:
        raise ValueError(f"manifest {path} has no rows")
    return rows


def parse_sets(items: list[str] | None) -> dict:
    """`--set NODE.INPUT=VALUE ...` as a column dict (values as text; JSON values allowed, e.g. true)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"--set {item!r}: expected NODE.INPUT=VALUE, e.g. KSampler.steps=20")
        out[key.strip()] = value
    return out


@dataclass(frozen=True)
class Binding:
    column: str
    node_id: str
    input: str


def split_column(column: str) -> tuple[str, str] | None:
    """(node, input) of a `NODE.INPUT` column; None for a plain metadata column."""
    node, dot, name = column.rpartition(".")
    return (node, name) if dot and node and name else None


def resolve(column: str, workflow: dict) -> Binding:
    """The node a column addresses: by id, else by `_meta.title`, else by a class_type used once."""
    parts = split_column(column)
    if parts is None:
        raise ValueError(f"column {column!r} is not NODE.INPUT")
    node, name = parts
    if node in workflow:
        return Binding(column, node, name)
    by_title = [nid for nid, n in workflow.items() if n.get("_meta", {}).get("title") == node]
    if len(by_title) == 1:
        return Binding(column, by_title[0], name)
    if len(by_title) > 1:
        raise ValueError(f"column {column!r}: title {node!r} is used by nodes {', '.join(by_title)}; "
                         f"give the node id instead (e.g. {by_title[0]}.{name}) or rename one in ComfyUI")
    by_type = [nid for nid, n in workflow.items() if n.get("class_type") == node]
    if len(by_type) == 1:
        return Binding(column, by_type[0], name)
    titles = sorted({n.get("_meta", {}).get("title", nid) for nid, n in workflow.items()})
    hint = f"; {len(by_type)} nodes are {node}, use an id" if by_type else ""
    raise ValueError(f"column {column!r}: no node titled {node!r} in the workflow{hint} "
                     f"(titles: {', '.join(repr(t) for t in titles)})")
