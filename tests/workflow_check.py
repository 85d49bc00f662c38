"""Validation of ComfyUI workflow JSON against node definitions in `/object_info` format.

`object_info` maps a node type to {"input": {"required": {name: [TYPE or [options], {opts}]},
"optional": {...}}, "input_order": {"required": [...], "optional": [...]}, "output": [TYPE, ...]}.
The always-run tests build it from our schemas (through a fake comfy_api) plus a hand-written subset
of ComfyUI's core nodes; the real-ComfyUI tests take it from a running server.

Each check returns a list of problems (empty = valid), so a test can show all of them at once.
"""
from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# UI workflows live where ComfyUI's Templates browser serves them; their API-format twins (what
# POST /prompt runs) in workflows/api/, a folder ComfyUI does not list
UI_DIR = os.path.join(ROOT, "example_workflows")
API_DIR = os.path.join(ROOT, "workflows", "api")


def api_twin(name: str) -> str:
    """Path of the API twin of a UI workflow, given its path or its name (with or without .json)."""
    base = os.path.basename(name)
    return os.path.join(API_DIR, base if base.endswith(".json") else base + ".json")


PRIMITIVES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

VIRTUAL_NODES = {"Note", "MarkdownNote"}
"""Frontend-only nodes: in the UI workflow, never in /object_info or the API twin."""


def ordered_inputs(info: dict) -> list[tuple[str, str, bool, dict, bool]]:
    """(name, type, is_widget, options, required) in the node's input order."""
    out = []
    order = info.get("input_order") or {sec: list(info["input"].get(sec, {})) for sec in ("required", "optional")}
    for sec in ("required", "optional"):
        for name in order.get(sec, []):
            spec = info["input"][sec][name]
            typ = "COMBO" if isinstance(spec[0], list) else spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(spec[0], list):
                opts = {**opts, "options": spec[0]}
            elif typ == "COMBO" and "options" not in opts:
                opts = {**opts, "options": opts.get("options", [])}
            out.append((name, typ, typ in PRIMITIVES and not opts.get("forceInput"), opts, sec == "required"))
    return out


def extra_widget_values(opts: dict) -> int:
    """UI-only values saved after a widget's own: the seed's "control after generate" mode, and the
    upload button of an image combo (LoadImage saves [file, "image"])."""
    return int(bool(opts.get("control_after_generate"))) + int(bool(opts.get("image_upload")))


def _compatible(out_type: str, in_type: str) -> bool:
    if "*" in (out_type, in_type):
        return True
    return bool(set(out_type.split(",")) & set(in_type.split(",")))


# Outputs a newer ComfyUI added to a core node (0.33: SaveImage / PreviewImage return their IMAGE, PreviewAny
# its text).
# A workflow saved without them (as ours are, to load on every tested version) is still valid; one that
# lists them is too. Nothing else about the node may differ.
LATER_OUTPUTS = {"SaveImage": ["IMAGE"], "PreviewImage": ["IMAGE"], "PreviewAny": ["STRING"]}


def outputs_without_later(node_type: str, outputs: list) -> list:
    """The node's output types without the ones a newer ComfyUI added (`LATER_OUTPUTS`)."""
    later = LATER_OUTPUTS.get(node_type, [])
    if later and list(outputs[-len(later):]) == later:
        return list(outputs[:-len(later)])
    return list(outputs)


def check_ui(wf: dict, object_info: dict, name: str = "workflow") -> list[str]:
    problems = []
    nodes = {n["id"]: n for n in wf.get("nodes", [])}
    links = {link[0]: link for link in wf.get("links", [])}
    if len(links) != len(wf.get("links", [])):
        problems.append(f"{name}: duplicate link ids")
    for nid, node in nodes.items():
        t = node["type"]
        if t in VIRTUAL_NODES:
            continue
        if t not in object_info:
            problems.append(f"{name}: node {nid} has unknown type {t!r}")
            continue
        info = object_info[t]
        spec = {n: (typ, w, o, r) for n, typ, w, o, r in ordered_inputs(info)}
        linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
        widgets = [(n, o) for n, typ, w, o, r in ordered_inputs(info) if w and n not in linked]
        expected = sum(1 + extra_widget_values(o) for _, o in widgets)
        values = node.get("widgets_values", [])
        if len(values) != expected:
            problems.append(f"{name}: node {nid} ({t}) has {len(values)} widget values, its schema {expected}")
        for slot, inp in enumerate(node.get("inputs", [])):
            if inp["name"] not in spec:
                problems.append(f"{name}: node {nid} ({t}) has input {inp['name']!r} not in its schema")
                continue
            lid = inp.get("link")
            if lid is None:
                if spec[inp["name"]][3] and not spec[inp["name"]][1]:
                    problems.append(f"{name}: node {nid} ({t}) required input {inp['name']!r} not connected")
                continue
            link = links.get(lid)
            if link is None or link[3] != nid or link[4] != slot:
                problems.append(f"{name}: node {nid} input {inp['name']!r} names link {lid}, which does not end there")
        for n, typ, is_widget, opts, required in ordered_inputs(info):
            if required and not is_widget and n not in linked:
                problems.append(f"{name}: node {nid} ({t}) required input {n!r} not connected")
        outputs = node.get("outputs", [])
        allowed = {len(info.get("output", [])), len(outputs_without_later(t, info.get("output", [])))}
        if len(outputs) not in allowed:
            problems.append(f"{name}: node {nid} ({t}) has {len(outputs)} outputs, its schema {sorted(allowed)}")
    for lid, (link_id, src, sslot, dst, dslot, typ) in links.items():
        if src not in nodes or dst not in nodes:
            problems.append(f"{name}: link {lid} joins missing node(s) {src} -> {dst}")
            continue
        s_out = nodes[src].get("outputs", [])
        if sslot >= len(s_out) or lid not in (s_out[sslot].get("links") or []):
            problems.append(f"{name}: link {lid} not listed on output {sslot} of node {src}")
        d_in = nodes[dst].get("inputs", [])
        if dslot >= len(d_in) or d_in[dslot].get("link") != lid:
            problems.append(f"{name}: link {lid} not on input {dslot} of node {dst}")
            continue
        s_type, d_type = nodes[src]["type"], nodes[dst]["type"]
        if s_type in object_info and d_type in object_info:
            out_types = object_info[s_type].get("output", [])
            real = out_types[sslot] if sslot < len(out_types) else None
            in_spec = {n: typ for n, typ, *_ in ordered_inputs(object_info[d_type])}
            want = in_spec.get(d_in[dslot]["name"])
            if real != typ:
                problems.append(f"{name}: link {lid} typed {typ}, but output {sslot} of {s_type} is {real}")
            if want is not None and real is not None and not _compatible(real, want):
                problems.append(f"{name}: link {lid} feeds {real} into {d_type}.{d_in[dslot]['name']} ({want})")
    for nid, node in nodes.items():
        for slot, out in enumerate(node.get("outputs", [])):
            for lid in out.get("links") or []:
                if lid not in links or links[lid][1] != nid or links[lid][2] != slot:
                    problems.append(f"{name}: node {nid} output {slot} lists link {lid}, which does not start there")
    return problems


def check_api(api: dict, object_info: dict, name: str = "api workflow", check_values: bool = True,
              skip_value_of: tuple[str, ...] = ()) -> list[str]:
    problems = []
    for nid, node in api.items():
        t = node.get("class_type")
        if t not in object_info:
            problems.append(f"{name}: node {nid} has unknown class_type {t!r}")
            continue
        inputs = node.get("inputs", {})
        spec = {n: (typ, w, o, r) for n, typ, w, o, r in ordered_inputs(object_info[t])}
        for n, (typ, is_widget, opts, required) in spec.items():
            if required and n not in inputs:
                problems.append(f"{name}: node {nid} ({t}) lacks required input {n!r}")
        for n, value in inputs.items():
            if n not in spec:
                problems.append(f"{name}: node {nid} ({t}) has input {n!r} not in its schema")
                continue
            typ, is_widget, opts, _ = spec[n]
            if isinstance(value, list):
                src, slot = value
                if src not in api:
                    problems.append(f"{name}: node {nid}.{n} links to missing node {src}")
                    continue
                src_t = api[src]["class_type"]
                outs = object_info.get(src_t, {}).get("output", [])
                if slot >= len(outs):
                    problems.append(f"{name}: node {nid}.{n} links to output {slot} of {src_t}, which has {len(outs)}")
                elif not _compatible(outs[slot], typ):
                    problems.append(f"{name}: node {nid}.{n} ({typ}) fed {outs[slot]} from {src_t}")
                continue
            if not is_widget:
                problems.append(f"{name}: node {nid}.{n} ({typ}) needs a link, got {value!r}")
                continue
            if not check_values or f"{t}.{n}" in skip_value_of:
                continue
            if typ == "COMBO" and opts.get("options") and value not in opts["options"]:
                problems.append(f"{name}: node {nid}.{n} = {value!r} not among {opts['options']}")
            if typ in ("INT", "FLOAT"):
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    problems.append(f"{name}: node {nid}.{n} = {value!r} is not a number")
                elif ("min" in opts and value < opts["min"]) or ("max" in opts and value > opts["max"]):
                    problems.append(f"{name}: node {nid}.{n} = {value} outside [{opts.get('min')}, {opts.get('max')}]")
            if typ == "BOOLEAN" and not isinstance(value, bool):
                problems.append(f"{name}: node {nid}.{n} = {value!r} is not a boolean")
            if typ == "STRING" and not isinstance(value, str):
                problems.append(f"{name}: node {nid}.{n} = {value!r} is not a string")
    return problems


def check_twin(ui: dict, api: dict, object_info: dict, name: str = "workflow") -> list[str]:
    """The API twin is the UI workflow: same nodes, widget values and links."""
    problems = []
    nodes = {str(n["id"]): n for n in ui["nodes"] if n["type"] not in VIRTUAL_NODES}
    if set(nodes) != set(api):
        return [f"{name}: UI nodes {sorted(nodes)} != API nodes {sorted(api)}"]
    links = {link[0]: link for link in ui["links"]}
    for nid, node in nodes.items():
        if node["type"] != api[nid]["class_type"]:
            problems.append(f"{name}: node {nid} is {node['type']} in UI, {api[nid]['class_type']} in API")
            continue
        if node["type"] not in object_info:
            continue
        linked = {}
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                link = links[inp["link"]]
                linked[inp["name"]] = [str(link[1]), link[2]]
        values = list(node.get("widgets_values", []))
        expect = dict(linked)
        for n, typ, is_widget, opts, _ in ordered_inputs(object_info[node["type"]]):
            if is_widget and n not in linked and values:
                expect[n] = values.pop(0)
                for _ in range(extra_widget_values(opts)):
                    if values:
                        values.pop(0)
        if expect != api[nid]["inputs"]:
            problems.append(f"{name}: node {nid} ({node['type']}) inputs differ: UI {expect} vs API {api[nid]['inputs']}")
    return problems


# --- how ComfyUI serves templates and how the frontend draws nodes (used by tests/test_example_workflows.py) --

TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")
"""ComfyUI (app/custom_node_manager.py) serves /api/workflow_templates/<pack>/ from each of these that exists,
in this order, under one prefix: the first that exists answers every request."""


def template_folder(pack_dir: str = ROOT) -> str | None:
    for name in TEMPLATE_FOLDERS:
        if os.path.exists(os.path.join(pack_dir, name)):
            return os.path.join(pack_dir, name)
    return None


# LiteGraph's drawing constants as the ComfyUI frontend (1.39.14 and 1.49.6, measured in Chromium from
# node.computeSize() of freshly created nodes) uses them: the title bar sits above node.pos; the body holds
# max(link inputs, outputs) slot rows, then the widgets.
TITLE_H = 30
SLOT_H = 20
WIDGET_H = 24           # 20 px widget + 4 px spacing
WIDGETS_PAD = 8         # below the last widget
BODY_PAD = 6
MULTILINE_H = 62        # a multiline text widget's minimum (CLIPTextEncode, Note)


def min_body_size(node: dict) -> tuple[float, float]:
    """The smallest body the frontend draws for a saved node, from its slots and widget values (a lower
    bound: nodes are drawn at max(saved size, this))."""
    links = [i for i in node.get("inputs", []) if not i.get("widget")]
    rows = max(len(links), len(node.get("outputs", [])))
    values = node.get("widgets_values") or []
    if isinstance(values, dict):  # some nodes save their widgets by name
        values = list(values.values())
    multiline = node["type"] in VIRTUAL_NODES or node["type"] == "CLIPTextEncode"
    h = BODY_PAD + SLOT_H * rows
    if values:
        h += (MULTILINE_H if multiline else WIDGET_H * len(values)) + WIDGETS_PAD
    return 140.0, float(h)


def drawn_rect(node: dict) -> tuple[float, float, float, float]:
    """(x, y, w, h) of the node as drawn, title bar included."""
    mw, mh = min_body_size(node)
    w, h = node.get("size") or (0, 0)
    if isinstance(node.get("size"), dict):  # very old workflows: {"0": w, "1": h}
        w, h = node["size"]["0"], node["size"]["1"]
    x, y = node["pos"] if not isinstance(node["pos"], dict) else (node["pos"]["0"], node["pos"]["1"])
    return float(x), float(y) - TITLE_H, max(float(w), mw), max(float(h), mh) + TITLE_H


def overlaps(rects: dict, gap: float = 0.0) -> list[tuple]:
    """Pairs (id_a, id_b) of rectangles {id: (x, y, w, h)} that overlap (closer than gap)."""
    out = []
    items = sorted(rects.items(), key=lambda kv: str(kv[0]))
    for i, (a, (ax, ay, aw, ah)) in enumerate(items):
        for b, (bx, by, bw, bh) in items[i + 1:]:
            if ax < bx + bw + gap and bx < ax + aw + gap and ay < by + bh + gap and by < ay + ah + gap:
                out.append((a, b))
    return out


def check_layout(wf: dict, name: str = "workflow") -> list[str]:
    rects = {n["id"]: drawn_rect(n) for n in wf.get("nodes", [])}
    types = {n["id"]: n["type"] for n in wf.get("nodes", [])}
    return [f"{name}: node {a} ({types[a]}) overlaps node {b} ({types[b]}) as drawn: {rects[a]} vs {rects[b]}"
            for a, b in overlaps(rects)]
