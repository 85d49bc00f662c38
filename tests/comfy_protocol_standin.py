"""A protocol stand-in for a ComfyUI server, for the always-run `sharp batch` tests and the
runner-overhead benchmark. It is NOT ComfyUI: it speaks ComfyUI's HTTP protocol (/object_info,
/system_stats, /prompt, /queue, /history, /view, /upload/image, /interrupt) on 127.0.0.1 and
executes a trivial graph of five node types with numpy + Pillow: EmptyImage, LoadImage, ImageInvert,
SaveImage, PreviewImage. Any other class_type fails at run time.

/object_info is a saved copy of ComfyUI 0.33.0's (tests/data/object_info_comfyui_0.33.0.json,
tooltips dropped), with LoadImage's options replaced by the files in this stand-in's input folder.
Like ComfyUI, POST /prompt answers 400 with node_errors for an unknown class_type or a LoadImage file
that is not there; an EmptyImage larger than MAX_PIXELS fails while running (as an out-of-memory
would). Fault knobs for tests: `delay_s` (seconds per prompt), `fail_next` (that many prompts fail),
`die_after` (the server stops answering, its queue lost, after that many prompts).
"""
from __future__ import annotations

import email
import email.policy
import io
import json
import os
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

OBJECT_INFO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "object_info_comfyui_0.33.0.json")
MAX_PIXELS = 1024 * 1024
VERSION = "protocol-stand-in"


class Interrupted(Exception):
    pass


class StandIn:
    def __init__(self, base: str, delay_s: float = 0.0, fail_next: int = 0, die_after: int | None = None,
                 port: int = 0):
        self.base = base
        for sub in ("input", "output", "temp"):
            os.makedirs(os.path.join(base, sub), exist_ok=True)
        with open(OBJECT_INFO) as fh:
            self._object_info = json.load(fh)
        self.delay_s, self.fail_next, self.die_after = delay_s, fail_next, die_after
        self.lock = threading.Condition()
        self.pending: list[tuple[int, str, dict]] = []
        self.running: tuple[int, str, dict] | None = None
        self.history: dict[str, dict] = {}
        self.executed: list[str] = []       # prompt ids run to the end (success or error), in order
        self.received: list[str] = []       # prompt ids queued
        self.counter = 0
        self.interrupt_flag = False
        self.dead = False
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._threads = [threading.Thread(target=self.httpd.serve_forever, daemon=True),
                         threading.Thread(target=self._executor, daemon=True)]

    def start(self) -> "StandIn":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        with self.lock:
            self.dead = True
            self.lock.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    def die(self) -> None:
        """Crash: stop answering and forget the queue (from any thread)."""
        threading.Thread(target=self.stop, daemon=True).start()

    # --- the graph --------------------------------------------------------------------------------------
    def object_info(self) -> dict:
        oi = json.loads(json.dumps(self._object_info))
        oi["LoadImage"]["input"]["required"]["image"][0] = sorted(os.listdir(os.path.join(self.base, "input")))
        return oi

    def _validate(self, prompt: dict):
        for nid, node in prompt.items():
            if node.get("class_type") not in self._object_info:
                return {"error": {"type": "invalid_prompt", "message": f"Cannot execute because node "
                                  f"{node.get('class_type')} does not exist.", "details": f"Node ID '#{nid}'",
                                  "extra_info": {}}, "node_errors": {}}
        errors = {}
        files = set(os.listdir(os.path.join(self.base, "input")))
        for nid, node in prompt.items():
            if node["class_type"] == "LoadImage" and node["inputs"].get("image") not in files:
                errors[nid] = {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                                           "details": f"image: '{node['inputs'].get('image')}' not in {sorted(files)}",
                                           "extra_info": {"input_name": "image"}}],
                               "dependent_outputs": [], "class_type": "LoadImage"}
        if errors:
            return {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed "
                              "validation", "details": "", "extra_info": {}}, "node_errors": errors}
        return None

    def _run_node(self, nid, prompt, cache, outputs):
        if nid in cache:
            return cache[nid]
        node = prompt[nid]
        args = {k: (self._run_node(str(v[0]), prompt, cache, outputs) if isinstance(v, list) else v)
                for k, v in node["inputs"].items()}
        t = node["class_type"]
        if t == "EmptyImage":
            w, h = args["width"], args["height"]
            if w * h > MAX_PIXELS:
                raise MemoryError(f"stand-in: not enough memory for a {w}x{h} image (max {MAX_PIXELS} pixels)")
            c = args.get("color", 0)
            rgb = np.array([(c >> 16) & 255, (c >> 8) & 255, c & 255], np.uint8)
            out = np.broadcast_to(rgb, (args.get("batch_size", 1), h, w, 3)).copy()
        elif t == "LoadImage":
            with Image.open(os.path.join(self.base, "input", args["image"])) as im:
                out = np.asarray(im.convert("RGB"))[None].copy()
        elif t == "ImageInvert":
            out = 255 - args["image"]
        elif t in ("SaveImage", "PreviewImage"):
            kind = "output" if t == "SaveImage" else "temp"
            prefix = args.get("filename_prefix", "ComfyUI")
            sub, _, stem = prefix.rpartition("/")
            folder = os.path.join(self.base, kind, sub)
            os.makedirs(folder, exist_ok=True)
            saved = []
            for img in args["images"]:
                self.counter += 1
                name = f"{stem}_{self.counter:05d}_.png"
                Image.fromarray(img).save(os.path.join(folder, name))
                saved.append({"filename": name, "subfolder": sub, "type": kind})
            outputs[nid] = {"images": saved}
            out = args["images"]
        else:
            raise NotImplementedError(f"the protocol stand-in cannot run {t} (it is not ComfyUI)")
        cache[nid] = out
        return out

    def _executor(self):
        while True:
            with self.lock:
                while not self.pending and not self.dead:
                    self.lock.wait()
                if self.dead:
                    return
                self.running = self.pending.pop(0)
                self.interrupt_flag = False
            number, pid, prompt = self.running
            start = int(time.time() * 1000)
            messages = [["execution_start", {"prompt_id": pid, "timestamp": start}]]
            outputs, status = {}, "success"
            try:
                end = time.time() + self.delay_s
                while time.time() < end:
                    if self.interrupt_flag or self.dead:
                        raise Interrupted()
                    time.sleep(min(0.01, max(0.0, end - time.time())))
                if self.fail_next > 0:
                    self.fail_next -= 1
                    raise RuntimeError("stand-in: injected failure")
                cache = {}
                for nid, node in prompt.items():
                    if node["class_type"] in ("SaveImage", "PreviewImage"):
                        self._run_node(nid, prompt, cache, outputs)
                messages.append(["execution_success", {"prompt_id": pid, "timestamp": int(time.time() * 1000)}])
            except Interrupted:
                status = "error"
                messages.append(["execution_interrupted", {"prompt_id": pid, "node_id": "1", "node_type": "?",
                                                           "executed": [], "timestamp": int(time.time() * 1000)}])
            except Exception as err:  # noqa: BLE001 (reported to the client, as ComfyUI does)
                status = "error"
                bad = next(iter(prompt))
                messages.append(["execution_error", {"prompt_id": pid, "node_id": bad,
                                                     "node_type": prompt[bad]["class_type"],
                                                     "exception_message": str(err),
                                                     "exception_type": type(err).__name__, "traceback": []}])
            with self.lock:
                if self.dead:
                    return
                self.history[pid] = {"prompt": [number, pid, prompt, {}, []], "outputs": outputs,
                                     "status": {"status_str": status, "completed": status == "success",
                                                "messages": messages}}
                self.executed.append(pid)
                self.running = None
                if self.die_after is not None and len(self.executed) >= self.die_after:
                    self.die()

    # --- HTTP -------------------------------------------------------------------------------------------
    def _handler(self):
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body, ctype="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self):
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_GET(self):
                u = urllib.parse.urlparse(self.path)
                if u.path == "/object_info":
                    return self._send(200, srv.object_info())
                if u.path == "/system_stats":
                    return self._send(200, {"system": {"comfyui_version": VERSION, "os": "stand-in"}, "devices": []})
                if u.path.startswith("/history/"):
                    pid = urllib.parse.unquote(u.path[len("/history/"):])
                    with srv.lock:
                        return self._send(200, {pid: srv.history[pid]} if pid in srv.history else {})
                if u.path == "/queue":
                    with srv.lock:
                        run = [list(srv.running[:2]) + [srv.running[2], {}, []]] if srv.running else []
                        pend = [[n, p, pr, {}, []] for n, p, pr in srv.pending]
                    return self._send(200, {"queue_running": run, "queue_pending": pend})
                if u.path == "/view":
                    q = dict(urllib.parse.parse_qsl(u.query))
                    path = os.path.join(srv.base, q.get("type", "output"), q.get("subfolder", ""), q["filename"])
                    if not os.path.isfile(path):
                        return self._send(404, b"", "text/plain")
                    with open(path, "rb") as fh:
                        return self._send(200, fh.read(), "image/png")
                return self._send(404, {"error": "not found"})

            def do_POST(self):
                u = urllib.parse.urlparse(self.path)
                if u.path == "/prompt":
                    prompt = json.loads(self._body())["prompt"]
                    bad = srv._validate(prompt)
                    if bad:
                        return self._send(400, bad)
                    pid = str(uuid.uuid4())
                    with srv.lock:
                        number = len(srv.received)
                        srv.received.append(pid)
                        srv.pending.append((number, pid, prompt))
                        srv.lock.notify_all()
                    return self._send(200, {"prompt_id": pid, "number": number, "node_errors": {}})
                if u.path == "/queue":
                    ids = set(json.loads(self._body() or b"{}").get("delete", []))
                    with srv.lock:
                        srv.pending = [p for p in srv.pending if p[1] not in ids]
                    return self._send(200, {})
                if u.path == "/interrupt":
                    body = json.loads(self._body() or b"{}")
                    with srv.lock:
                        if srv.running and body.get("prompt_id") in (None, srv.running[1]):
                            srv.interrupt_flag = True
                    return self._send(200, {})
                if u.path == "/upload/image":
                    raw = self._body()
                    msg = email.message_from_bytes(b"Content-Type: " + self.headers["Content-Type"].encode()
                                                   + b"\r\n\r\n" + raw, policy=email.policy.HTTP)
                    part = next(p for p in msg.iter_parts() if p.get_param("name", header="content-disposition") == "image")
                    name, data = part.get_filename(), part.get_payload(decode=True)
                    folder = os.path.join(srv.base, "input")
                    stem, ext = os.path.splitext(name)
                    i, final = 0, name
                    while os.path.exists(os.path.join(folder, final)):  # ComfyUI: keep identical, rename others
                        with open(os.path.join(folder, final), "rb") as fh:
                            if fh.read() == data:
                                break
                        i += 1
                        final = f"{stem} ({i}){ext}"
                    else:
                        with open(os.path.join(folder, final), "wb") as fh:
                            fh.write(data)
                    return self._send(200, {"name": final, "subfolder": "", "type": "input"})
                return self._send(404, {"error": "not found"})

        return Handler


def main(argv=None) -> None:
    """Run as a stand-in for ComfyUI's main.py (the launcher tests): --port P --output-directory
    DIR/output [--standin-delay S]; input/ and temp/ beside it; other ComfyUI arguments are ignored."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--output-directory", required=True)
    p.add_argument("--standin-delay", type=float, default=0.0, help="seconds per prompt")
    args, _ = p.parse_known_args(argv)
    server = StandIn(os.path.dirname(os.path.abspath(args.output_directory)), port=args.port,
                     delay_s=args.standin_delay).start()
    print(f"protocol stand-in on {server.url}, affinity {sorted(os.sched_getaffinity(0))}", flush=True)
    server._threads[0].join()
