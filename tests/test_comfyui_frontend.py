"""The example workflows in the real ComfyUI frontend, driven in Chromium by Playwright, as a new user meets
them: Templates browser -> click -> read -> Run.

Opt-in twice over: marker `comfyui` with SHARP_COMFYUI_DIR (the server, tests/test_comfyui_server.py's),
and a browser: the `playwright` Python package plus a Chromium binary (SHARP_CHROMIUM, default
/usr/bin/chromium; Debian's `chromium` package). Skipped with the reason when either is missing.

Stand-ins in the server's base directory: models/diffusion_models/FLUX-RS is a tiny diffusers Flux folder
(only listed, never run here), and an empty file for every model a family workflow names in its
`properties.models`, so a missing-model dialog can only come from a wrong entry, not a missing download.

Screenshots (one of the whole graph and one of its Note per workflow, the Templates browser, the DS-DiT
result) go to SHARP_SCREENSHOTS (default: <tmp>/sharp-frontend-screenshots)/<ComfyUI version>/.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import tempfile
import time
import urllib.request

import pytest

import workflow_check as W
from comfyui_harness import skip_without_comfyui
from test_comfyui_server import PACK_FOLDER, H, Server, pack_base  # noqa: F401  (H: ComfyUI importable, the pack runs in the server)

pytestmark = [pytest.mark.comfyui, skip_without_comfyui]

CHROMIUM = os.environ.get("SHARP_CHROMIUM", "/usr/bin/chromium")
WORKFLOWS = sorted(glob.glob(os.path.join(W.UI_DIR, "*.json")))
NAMES = [os.path.basename(p)[:-5] for p in WORKFLOWS]
OUR_NODES = ["SHARPResolutionPromotion", "SHARPLoadRSFlux", "SHARPSpectrumAnalysis", "SHARPSchedulePreview",
             "SHARPLoadDSDiT", "SHARPDSDiTReferenceSR", "SHARPFluxSigmas", "SHARPDSDiTSceneSR"]
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("needs the playwright Python package (pip install playwright) for the browser tests")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"needs a Chromium binary at {CHROMIUM} (Debian: apt install chromium; or set SHARP_CHROMIUM)")
    return sync_playwright


@pytest.fixture(scope="module")
def shots(H):
    folder = os.path.join(os.environ.get("SHARP_SCREENSHOTS", os.path.join(tempfile.gettempdir(),
                                                                           "sharp-frontend-screenshots")),
                          H.comfy_version())
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    print(f"\nscreenshots: {folder}")
    return folder


def _write_standins(models: str) -> None:
    from flux_fixtures import tiny_diffusers_flux, write_diffusers_folder

    write_diffusers_folder(os.path.join(models, "diffusion_models", "FLUX-RS"), tiny_diffusers_flux(seed=5), shards=2)
    for path in WORKFLOWS:
        for node in json.load(open(path))["nodes"]:
            for m in node.get("properties", {}).get("models", []):
                os.makedirs(os.path.join(models, m["directory"]), exist_ok=True)
                open(os.path.join(models, m["directory"], m["name"]), "wb").close()


@pytest.fixture(scope="module")
def server(H, tmp_path_factory):
    sync_playwright = _playwright()  # skip before starting anything
    del sync_playwright
    base = pack_base(tmp_path_factory, "comfy_frontend")
    _write_standins(os.path.join(base, "models"))
    with Server.running(base) as srv:
        # not a first visit: no Templates browser popping up over the graphs (its own test opens it)
        req = urllib.request.Request(srv.url + "/settings/Comfy.TutorialCompleted", data=b"true", method="POST",
                                     headers={"Content-Type": "application/json"})
        assert urllib.request.urlopen(req, timeout=30).status == 200
        yield srv


class Page:
    """One Chromium page on the server, with the console errors and failed requests it saw."""

    def __init__(self, page, url):
        self.page, self.url, self.errors = page, url, []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text + " @ " + str(m.location)))
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("response", lambda r: r.status >= 400 and self.errors.append(f"HTTP {r.status} {r.url}"))

    DIALOG = "[role='dialog']:visible, .p-dialog:visible"

    def open(self):
        self.page.goto(self.url)
        self.page.wait_for_function(
            "!!(window.app && window.app.graph && window.LiteGraph && LiteGraph.registered_node_types['SHARPFluxSigmas'])",
            timeout=120000)
        try:  # a first visit opens the Templates browser (new-user default) a moment after start
            self.page.locator(self.DIALOG).first.wait_for(timeout=8000)
        except Exception:  # noqa: BLE001 - no dialog this time
            pass
        self.close_dialogs()
        # draw text at every zoom in the screenshots (the frontend drops it below ~0.6x by default)
        self.page.evaluate("""async () => { try { await app.extensionManager.setting.set('LiteGraph.Canvas.MinFontSizeForLOD', 1); }
            catch (e) {} app.canvas._lowQualityZoomThreshold = 0; }""")

    def close_dialogs(self):
        for _ in range(10):
            if not self.page.locator(self.DIALOG).count():
                return
            close = self.page.locator("[role='dialog']:visible button[aria-label*='lose'], "
                                      ".p-dialog:visible button[aria-label*='lose'], .p-dialog:visible .p-dialog-close-button")
            if close.count():
                close.first.click()
            else:
                self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(400)
        raise AssertionError(f"a dialog does not close: {self.dialogs()}")

    def dialogs(self) -> list[str]:
        return [t.strip()[:300] for t in self.page.locator(self.DIALOG).all_inner_texts()]

    def toasts(self) -> list[str]:
        """Error toasts (1.39: PrimeVue toasts) and 1.49's "N errors found ... View details" status panel
        (where it reports missing models and nodes instead of a dialog)."""
        texts = self.page.locator(".p-toast-message-error:visible").all_inner_texts()
        texts += [t for t in self.page.locator("[role='status']:visible").all_inner_texts()
                  if re.search(r"error|missing", t, re.I)]
        return [t.strip()[:300] for t in texts]

    def load(self, wf: dict):
        self.page.evaluate("async (wf) => { await app.loadGraphData(wf); }", wf)
        self.page.wait_for_timeout(1200)

    def drawn(self) -> dict:
        """node id -> (type, [x, y, w, h] as drawn, title bar included), read from the frontend's graph."""
        rows = self.page.evaluate("""() => app.graph._nodes.map(n => {
            const r = new Float32Array(4); n.getBounding ? n.getBounding(r) : r.set(n.boundingRect);
            return [String(n.id), n.type, Array.from(r)]; })""")  # ids are numbers in 1.39, strings in 1.49
        return {nid: (typ, rect) for nid, typ, rect in rows}

    def fit(self, rects, margin=40):
        xs = [r[0] for r in rects] + [r[0] + r[2] for r in rects]
        ys = [r[1] for r in rects] + [r[1] + r[3] for r in rects]
        self.page.evaluate("""([x0, y0, x1, y1, m]) => { const c = app.canvas, el = c.canvas;
            const w = el.clientWidth, h = el.clientHeight - 80;
            const s = Math.min(1.2, (w - 2 * m - 80) / (x1 - x0), (h - 2 * m) / (y1 - y0));
            c.ds.scale = s; c.ds.offset[0] = -x0 + (m + 80) / s; c.ds.offset[1] = -y0 + (m + 40) / s;
            c.setDirty(true, true); }""", [min(xs), min(ys), max(xs), max(ys), margin])
        self.page.wait_for_timeout(500)

    def at(self, x, y, scale=1.0):
        self.page.evaluate("""([x, y, s]) => { const c = app.canvas; c.ds.scale = s;
            c.ds.offset[0] = -x + 90 / s; c.ds.offset[1] = -y + 90 / s; c.setDirty(true, true); }""", [x, y, scale])
        self.page.wait_for_timeout(400)


@pytest.fixture(scope="module")
def browser(server):
    sync_playwright = _playwright()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        try:
            page = Page(b.new_page(viewport={"width": 1920, "height": 1200}), server.url)
            page.open()
            yield page
        finally:
            b.close()


def _get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


def _pack_errors(errors: list[str]) -> list[str]:
    """Console errors and failed requests that are the pack's: its routes, node types, workflows."""
    pat = re.compile(r"comfyui-sharp|comfyui_sharp|SHARP|sharp_|dsdit|rsflux|workflow_templates|JSON", re.I)
    return [e for e in errors if pat.search(e)]


@pytest.mark.parametrize("name", NAMES)
def test_template_is_served_with_thumbnail(server, name):
    status, ctype, body = _get(f"{server.url}/api/workflow_templates/{PACK_FOLDER}/{name}.json")
    assert status == 200 and json.loads(body)["nodes"]
    status, ctype, body = _get(f"{server.url}/api/workflow_templates/{PACK_FOLDER}/{name}.jpg")
    assert status == 200 and body[:3] == b"\xff\xd8\xff", f"{name}.jpg is not a JPEG"
    listed = json.loads(_get(f"{server.url}/api/workflow_templates")[2])
    assert name in listed[PACK_FOLDER]


@pytest.mark.parametrize("name", NAMES)
def test_workflow_opens_cleanly_and_nothing_overlaps(server, browser, shots, name):
    wf = json.load(open(os.path.join(W.UI_DIR, name + ".json")))
    browser.errors.clear()
    browser.load(wf)
    dialogs, toasts = browser.dialogs(), browser.toasts()
    drawn = browser.drawn()
    browser.fit([r for _, r in drawn.values()])
    browser.page.screenshot(path=os.path.join(shots, f"{name}.png"))
    note = next(r for t, r in drawn.values() if t == "Note")
    browser.at(note[0], note[1], 1.0)
    browser.page.screenshot(path=os.path.join(shots, f"{name}_note.png"))
    browser.close_dialogs()
    assert not dialogs, f"{name}: dialog(s) on load: {dialogs}"
    assert not toasts, f"{name}: error toast(s): {toasts}"
    assert not _pack_errors(browser.errors), browser.errors
    assert len(drawn) == len(wf["nodes"]), "the frontend dropped nodes"
    clashes = W.overlaps({nid: rect for nid, (_, rect) in drawn.items()})
    assert not clashes, f"{name}: drawn rectangles overlap: " + "; ".join(
        f"{a} {drawn[a]} / {b} {drawn[b]}" for a, b in clashes)
    # the JSON sizes are what the frontend draws (so the always-run layout check sees the real layout)
    for n in wf["nodes"]:
        x, y, w, h = W.drawn_rect(n)
        dx, dy, dw, dh = drawn[str(n["id"])][1]
        assert dw <= w + 1 and dh <= h + 1, f"{name}: node {n['id']} ({n['type']}) drawn {dw}x{dh}, laid out {w}x{h}"


def test_the_checks_see_a_broken_workflow(server, browser, shots):
    """The detection itself. A model file that is not there raises the frontend's missing-model warning
    (1.39: a dialog; 1.49: an "errors found" panel); the issue's case, the RS-FLUX folder described as a model
    file in properties.models, raises it in frontend 1.39 (1.49 accepts it once the folder is listed);
    two nodes on one spot overlap as drawn."""
    version = browser.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || ''")
    wf = json.load(open(os.path.join(W.UI_DIR, "family_flux1.json")))
    unet = next(n for n in wf["nodes"] if n["type"] == "UNETLoader")
    unet["widgets_values"][0] = unet["properties"]["models"][0]["name"] = "not-downloaded.safetensors"
    browser.load(wf)
    warned = browser.dialogs() + browser.toasts()
    browser.page.screenshot(path=os.path.join(shots, "broken_missing_model_detected.png"))
    browser.close_dialogs()
    assert any(re.search("model|error", t, re.I) for t in warned), f"no missing-model warning: {warned}"

    wf = json.load(open(os.path.join(W.UI_DIR, "rsflux_sharp_2048.json")))
    loader = next(n for n in wf["nodes"] if n["type"] == "SHARPLoadRSFlux")
    loader["properties"]["models"] = [{"name": "FLUX-RS", "url": "https://huggingface.co/BxuanZ/FLUX-RS",
                                       "directory": "diffusion_models"}]
    a, b = (n for n in wf["nodes"] if n["type"] in ("BasicGuider", "VAEDecode"))
    b["pos"] = list(a["pos"])
    browser.load(wf)
    warned = browser.dialogs() + browser.toasts()
    browser.page.screenshot(path=os.path.join(shots, "broken_folder_entry_and_overlap.png"))
    browser.close_dialogs()
    drawn = browser.drawn()
    assert {str(a["id"]), str(b["id"])} in [set(p) for p in W.overlaps({k: r for k, (_, r) in drawn.items()})]
    if version.startswith("1.39."):
        assert any("suffixes" in t for t in warned), f"frontend {version}: no warning for the folder entry: {warned}"


def test_every_template_opens_from_the_templates_browser(server, browser, shots):
    page = browser.page
    opened = {}
    for i, name in enumerate(NAMES):
        page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        page.get_by_text(PACK_FOLDER, exact=True).first.click()
        page.wait_for_timeout(800)
        if i == 0:
            page.screenshot(path=os.path.join(shots, "templates_browser.png"))
        card = page.locator(f"[data-testid='template-workflow-{name}']")
        if not card.count():
            card = page.get_by_text(name, exact=True)
        browser.errors.clear()
        card.first.click()
        page.wait_for_timeout(1500)
        nodes = page.evaluate("() => app.graph._nodes.map(n => n.type).sort()")
        opened[name] = nodes == sorted(n["type"] for n in json.load(open(os.path.join(W.UI_DIR, name + ".json")))["nodes"])
        browser.close_dialogs()
        assert not _pack_errors(browser.errors), (name, browser.errors)
    assert all(opened.values()), [n for n, ok in opened.items() if not ok]


@pytest.mark.parametrize("node_id", OUR_NODES)
def test_help_page_renders(server, browser, shots, node_id):
    """As a user opens it: select the node, press Node Info in the selection toolbox; the frontend fetches
    /extensions/<pack>/docs/<NodeId>.md and renders it (markdown -> HTML) in its side panel."""
    page = browser.page
    page.evaluate("""(id) => { app.graph.clear(); const n = LiteGraph.createNode(id); n.pos = [200, 200];
        app.graph.add(n); app.canvas.deselectAll && app.canvas.deselectAll(); app.canvas.selectNode(n);
        app.canvas.setDirty(true, true); }""", node_id)
    page.wait_for_timeout(600)
    page.locator("[data-testid='info-button']:visible").first.click()
    title = server.object_info[node_id]["display_name"]
    heading = page.locator(".markdown-content h1", has_text=title)
    heading.first.wait_for(timeout=15000)
    page.screenshot(path=os.path.join(shots, f"help_{node_id}.png"))
    body = page.locator(".markdown-content").first.inner_text()
    assert "Inputs" in body and len(body) > 200, body[:500]
    page.locator("[data-testid='info-button']:visible").first.click()  # close it again


@pytest.mark.parametrize("node_id", OUR_NODES)
def test_fresh_node_shows_its_combo_values_whole(server, browser, shots, node_id):
    """A node as a user adds it (default size): its widgets hold the schema's defaults, and every combo's
    value fits in the widget as the frontend draws it (text measured in the canvas font, 12 px Inter;
    the arrows and paddings take ~60 px; the frontend shortens the label before the value, so only a
    short label is counted), so e.g. the Load DS-DiT checkpoint name is not cut to
    "dsdit_small.safetensors (shipp...". The node is added beside the others, not after a graph clear:
    frontend 1.49 hands a new node that reuses a cleared node's id that node's widget values."""
    page = browser.page
    rows = page.evaluate("""(id) => { const n = LiteGraph.createNode(id); app.graph.add(n);
        n.pos = [200, 200 + 1000 * app.graph._nodes.length]; app.canvas.setDirty(true, true);
        const ctx = app.canvas.canvas.getContext('2d');
        ctx.font = (LiteGraph.NODE_SUBTEXT_SIZE || 12) + 'px ' + (LiteGraph.NODE_FONT || 'Inter');
        const margin = LiteGraph.NODE_WIDGET_MARGIN ?? 15;
        window._fresh = n;
        return (n.widgets || []).map(w => [w.name, w.type, w.value, ctx.measureText(w.label || w.name).width,
            ctx.measureText(String(w.value)).width, (w.width || n.size[0]) - 2 * margin]); }""", node_id)
    browser.at(*page.evaluate("() => _fresh.pos"))
    page.screenshot(path=os.path.join(shots, f"fresh_{node_id}.png"))
    page.evaluate("() => { app.graph.remove(_fresh); }")
    spec = {**server.object_info[node_id]["input"].get("required", {}),
            **server.object_info[node_id]["input"].get("optional", {})}
    for name, _, value, *_ in rows:
        if name in spec and isinstance(spec[name], list) and len(spec[name]) > 1 and "default" in spec[name][1]:
            assert value == spec[name][1]["default"], (node_id, name, value, spec[name][1]["default"])
    cut = [(name, value, round(text), round(width)) for name, typ, value, label, text, width in rows
           if typ == "combo" and text + 60 + min(label, 40) > width]
    assert not cut, f"{node_id}: combo values cut at the default width (name, value, text px, widget px): {cut}"


def test_dsdit_workflow_runs_from_the_run_button(server, browser, shots):
    page = browser.page
    wf = json.load(open(os.path.join(W.UI_DIR, "dsdit_refsr_x4.json")))
    browser.errors.clear()
    browser.load(wf)
    assert os.path.isfile(os.path.join(server.base, "input", "sharp_refsr_lr.jpg")), "example images not installed"
    run = page.locator("button:visible:has-text('Run'), button:visible:has-text('Queue')").first
    run.click()
    save_ids = [n["id"] for n in wf["nodes"] if n["type"] == "SaveImage"]
    deadline = time.time() + 300
    while time.time() < deadline:
        done = page.evaluate("(ids) => ids.every(id => { const n = app.graph.getNodeById(id); "
                             "return n && n.imgs && n.imgs.length > 0 && n.imgs[0].complete && n.imgs[0].naturalWidth > 0; })",
                             save_ids)
        if done:
            break
        page.wait_for_timeout(1000)
    drawn = browser.drawn()
    browser.fit([r for _, r in drawn.values()])
    page.screenshot(path=os.path.join(shots, "dsdit_refsr_x4_after_run.png"))
    assert done, f"no output image appeared within 300 s; toasts {browser.toasts()}; {server.log_tail()}"
    widths = page.evaluate("(ids) => ids.map(id => app.graph.getNodeById(id).imgs[0].naturalWidth)", save_ids)
    assert sorted(widths) == [480, 3 * 480]
    assert not browser.toasts() and not _pack_errors(browser.errors), browser.errors
