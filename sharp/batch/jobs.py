"""Manifest rows -> jobs: the workflow with the row's values set, coerced to each input's type and
checked against /object_info, plus the files to upload, the row's key and hashes."""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field

from sharp.batch import naming, schema
from sharp.batch.manifest import Binding, Row, resolve, split_column


@dataclass
class Job:
    key: str
    index: int
    row: dict                      # the manifest values as read (plus the --set ones)
    prompt: dict                   # API prompt; upload inputs hold local absolute paths
    uploads: list = field(default_factory=list)   # [(node id, input, local path)]
    prompt_hash: str = ""          # over the prompt with uploads replaced by their file hashes

    def titles(self) -> dict:
        return {nid: n.get("_meta", {}).get("title") or n.get("class_type", nid) for nid, n in self.prompt.items()}

    def seeds(self) -> dict:
        """Every seed-like input of the prompt, as `title.input`."""
        return {f"{self.titles()[nid]}.{name}": v for nid, n in self.prompt.items()
                for name, v in n.get("inputs", {}).items() if name in ("seed", "noise_seed") and not isinstance(v, list)}

    def sharp_params(self) -> dict:
        """The widget values of every SHARP node (class_type SHARP*), by title."""
        return {self.titles()[nid]: {"class_type": n["class_type"],
                                     **{k: v for k, v in n.get("inputs", {}).items() if not isinstance(v, list)}}
                for nid, n in self.prompt.items() if str(n.get("class_type", "")).startswith("SHARP")}

    def to_dict(self) -> dict:
        return {"key": self.key, "index": self.index, "row": self.row, "prompt": self.prompt,
                "uploads": [list(u) for u in self.uploads], "prompt_hash": self.prompt_hash}


class ManifestError(ValueError):
    """Every problem of every row, reported before anything is queued."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = problems[:50] + ([f"... and {len(problems) - 50} more"] if len(problems) > 50 else [])
        super().__init__(f"{len(problems)} problem(s) in the manifest, nothing was queued:\n  " + "\n  ".join(shown))


def build_jobs(workflow: dict, rows: list[Row], object_info: dict, sets: dict | None = None,
               base_dir: str = ".") -> tuple[list[Job], dict[int, list[str]]]:
    """(jobs of the valid rows, {row index: problems} of the invalid ones). Column problems (a title
    or input that does not exist) are reported on every row that uses the column."""
    _check_workflow(workflow)
    sets = sets or {}
    bindings: dict[str, Binding | str] = {}
    for column in list(sets) + [c for r in rows for c in r.values]:
        if column in bindings or split_column(column) is None:
            continue
        try:
            b = resolve(column, workflow)
            node = workflow[b.node_id]
            specs = schema.node_inputs(object_info.get(node.get("class_type"), {}))
            if node.get("class_type") in object_info and b.input not in specs:
                raise ValueError(f"column {column!r}: node {b.node_id} ({node['class_type']}) has no input "
                                 f"{b.input!r} (inputs: {', '.join(specs)})")
            bindings[column] = b
        except ValueError as err:
            bindings[column] = str(err)
    jobs, bad, seen = [], {}, {}
    for row in rows:
        problems, job = _build_one(workflow, row, object_info, sets, bindings, base_dir)
        key = naming.row_key(row.index, row.values)
        if key in seen:
            problems.append(f"id {key!r} is also the id of row {seen[key] + 1}: ids must be unique")
        seen.setdefault(key, row.index)
        if problems:
            bad[row.index] = [f"row {row.index + 1} (line {row.line}, {key}): {p}" for p in problems]
        else:
            jobs.append(job)
    return jobs, bad


def _check_workflow(workflow: dict) -> None:
    if not isinstance(workflow, dict) or not workflow or not all(
            isinstance(n, dict) and "class_type" in n for n in workflow.values()):
        raise ValueError("the workflow is not in ComfyUI's API format ({id: {class_type, inputs}}): "
                         "export it with Workflow > Export (API)")


def _build_one(workflow, row: Row, object_info, sets, bindings, base_dir):
    prompt = copy.deepcopy(workflow)
    problems, uploads = [], []
    merged = {**row.values, **sets}  # --set wins over the manifest
    for column, value in merged.items():
        b = bindings.get(column)
        if b is None:
            continue  # a metadata column
        if isinstance(b, str):
            problems.append(b)
            continue
        node = prompt[b.node_id]
        spec = schema.node_inputs(object_info.get(node.get("class_type"), {})).get(b.input)
        if spec is None:  # unknown class_type: check_prompt reports it
            node.setdefault("inputs", {})[b.input] = value
            continue
        if spec.is_upload and isinstance(value, str):
            path = value if os.path.isabs(value) else os.path.join(base_dir, value)
            if os.path.isfile(path):
                uploads.append((b.node_id, b.input, os.path.abspath(path)))
                node["inputs"][b.input] = os.path.abspath(path)
                continue
            if spec.choices is not None and value not in spec.choices:
                problems.append(f"{column} = {value!r}: not a local file (looked for {path}) "
                                f"and not an image on the server")
                continue
        try:
            node.setdefault("inputs", {})[b.input] = schema.coerce(spec, value)
        except ValueError as err:
            problems.append(f"{column}: {err}")
    problems += schema.check_prompt(prompt, object_info, skip={(n, i) for n, i, _ in uploads})
    key = naming.row_key(row.index, row.values)
    hashed = copy.deepcopy(prompt)
    for nid, name, path in uploads:
        hashed[nid]["inputs"][name] = "sha256:" + naming.file_sha256(path)
    return problems, Job(key, row.index, merged, prompt, uploads, naming.canonical_hash(hashed))
