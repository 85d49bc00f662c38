"""Node input specs from ComfyUI's `/object_info`: coerce manifest values to an input's type and
report the values the server would reject (unknown inputs, combo options, min/max, types)."""
from __future__ import annotations

from dataclasses import dataclass, field

PRIMITIVES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str                      # INT, FLOAT, STRING, BOOLEAN, COMBO or a link type (IMAGE, MODEL, ...)
    options: dict = field(default_factory=dict)
    required: bool = True

    @property
    def is_widget(self) -> bool:
        return self.type in PRIMITIVES and not self.options.get("forceInput")

    @property
    def choices(self) -> list | None:
        return self.options.get("options") if self.type == "COMBO" else None

    @property
    def is_upload(self) -> bool:  # LoadImage.image: a file on the server, uploadable
        return bool(self.options.get("image_upload"))


def node_inputs(info: dict) -> dict[str, InputSpec]:
    """name -> InputSpec of one /object_info entry (both the legacy `[[options], {}]` combo form and
    the V3 `["COMBO", {"options": [...]}]` form)."""
    out = {}
    for section in ("required", "optional"):
        for name, spec in (info.get("input", {}).get(section) or {}).items():
            opts = dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(spec[0], list):
                typ, opts["options"] = "COMBO", list(spec[0])
            else:
                typ = spec[0]
            out[name] = InputSpec(name, typ, opts, section == "required")
    return out


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def coerce(spec: InputSpec, value):
    """A manifest value (CSV gives strings) as the input's type; ValueError naming the problem."""
    if spec.type == "INT":
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{value!r} is not an integer")
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise ValueError(f"{value!r} is not an integer") from None
        return value
    if spec.type == "FLOAT":
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise ValueError(f"{value!r} is not a number") from None
        return float(value) if isinstance(value, int) else value
    if spec.type == "BOOLEAN" and isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE | _FALSE:
            return low in _TRUE
        raise ValueError(f"{value!r} is not a boolean (true/false)")
    if spec.type == "COMBO" and isinstance(value, str) and spec.choices:
        for option in spec.choices:  # numeric combos (e.g. scale [2, 4, 8]) from CSV text
            if not isinstance(option, str) and str(option) == value.strip():
                return option
    return value


def problems(spec: InputSpec, value) -> list[str]:
    """What ComfyUI's prompt validation would say about this widget value (empty: accepted)."""
    if not spec.is_widget:
        return [f"is a {spec.type} input: it takes a link from another node, not a value"]
    t = spec.type
    if t in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return [f"{value!r} is not a number"]
        if t == "INT" and isinstance(value, float) and not value.is_integer():
            return [f"{value!r} is not an integer"]
        lo, hi = spec.options.get("min"), spec.options.get("max")
        if lo is not None and value < lo:
            return [f"{value} is smaller than the minimum {lo}"]
        if hi is not None and value > hi:
            return [f"{value} is larger than the maximum {hi}"]
    elif t == "BOOLEAN" and not isinstance(value, bool):
        return [f"{value!r} is not a boolean"]
    elif t == "STRING" and not isinstance(value, str):
        return [f"{value!r} is not a string"]
    elif t == "COMBO" and spec.choices is not None and value not in spec.choices:
        shown = spec.choices if len(spec.choices) <= 12 else spec.choices[:12] + ["..."]
        return [f"{value!r} is not one of {shown}"]
    return []


def check_prompt(prompt: dict, object_info: dict, skip: set[tuple[str, str]] = frozenset()) -> list[str]:
    """Every problem of an API prompt against /object_info: unknown class types, unknown or missing
    inputs, links to missing nodes or outputs, rejected widget values. `skip`: (node id, input)
    pairs not to value-check (files to upload)."""
    out = []
    for nid, node in prompt.items():
        t = node.get("class_type")
        label = _label(nid, node)
        if t not in object_info:
            out.append(f"{label}: class_type {t!r} is not on the server (missing custom node pack?)")
            continue
        specs = node_inputs(object_info[t])
        inputs = node.get("inputs", {})
        for name, spec in specs.items():
            if spec.required and name not in inputs:
                out.append(f"{label}: required input {name!r} is missing")
        for name, value in inputs.items():
            spec = specs.get(name)
            if spec is None:
                out.append(f"{label}: has no input {name!r} (inputs: {', '.join(specs)})")
            elif _is_link(value):
                src = prompt.get(str(value[0]))
                if src is None:
                    out.append(f"{label}.{name}: links to node {value[0]}, which is not in the workflow")
                elif src.get("class_type") in object_info:
                    n_out = len(object_info[src["class_type"]].get("output", []))
                    if value[1] >= n_out:
                        out.append(f"{label}.{name}: links to output {value[1]} of {src['class_type']}, "
                                   f"which has {n_out}")
            elif (nid, name) not in skip:
                out += [f"{label}.{name}: {p}" for p in problems(spec, value)]
    return out


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) and not isinstance(value[1], bool)


def _label(nid: str, node: dict) -> str:
    title = node.get("_meta", {}).get("title")
    return f"node {nid} {title!r} ({node.get('class_type')})" if title else f"node {nid} ({node.get('class_type')})"
