"""ComfyUI's HTTP protocol (stdlib only): /object_info, /system_stats, /prompt, /history, /view,
/upload/image, /queue, /interrupt."""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid


class ServerUnreachable(ConnectionError):
    """The server did not answer (down, restarting, wrong URL) or answered with a 5xx."""


class PromptRejected(ValueError):
    """POST /prompt answered 400: the prompt failed ComfyUI's validation (node_errors)."""

    def __init__(self, message: str, body: dict):
        super().__init__(message)
        self.body = body


def rejection_message(body: dict) -> str:
    """ComfyUI's 400 answer as one line per error, e.g. `node 4 (SHARPDSDiTReferenceSR) scale: Value
    not in list: scale: 3 not in [2, 4, 8]`."""
    lines = []
    err = body.get("error")
    if isinstance(err, dict):
        lines.append(f"{err.get('message', '')}{': ' + err['details'] if err.get('details') else ''}")
    elif err:
        lines.append(str(err))
    for nid, ne in (body.get("node_errors") or {}).items():
        for e in ne.get("errors", []):
            lines.append(f"node {nid} ({ne.get('class_type')}) {e.get('extra_info', {}).get('input_name', '')}: "
                         f"{e.get('message', '')}: {e.get('details', '')}".strip())
    return "; ".join(line for line in lines if line) or json.dumps(body)[:500]


class ComfyClient:
    def __init__(self, url: str, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def _open(self, req, timeout=None):
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as err:
            if err.code >= 500:
                raise ServerUnreachable(f"{self.url}: HTTP {err.code} {err.reason}") from None
            raise
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
            raise ServerUnreachable(f"{self.url}: {getattr(err, 'reason', err)}") from None

    def get_json(self, path: str, timeout=None):
        with self._open(self.url + path, timeout) as r:
            return json.loads(r.read())

    def post_json(self, path: str, data: dict, timeout=None):
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
        with self._open(req, timeout) as r:
            body = r.read()
            return json.loads(body) if body.strip() else {}

    # --- the endpoints ------------------------------------------------------------------------------
    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def system_stats(self) -> dict:
        return self.get_json("/system_stats")

    def queue_prompt(self, prompt: dict) -> str:
        try:
            body = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = {"error": raw.decode(errors="replace")[:500]}
            raise PromptRejected(rejection_message(body), body) from None
        if body.get("node_errors"):  # queued, but some outputs were dropped as invalid
            self.delete([body["prompt_id"]])
            raise PromptRejected(rejection_message(body), body)
        return body["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        """The prompt's history entry once it has one (finished), else None."""
        return self.get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)

    def queue(self) -> dict:
        return self.get_json("/queue")

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        with self._open(f"{self.url}/view?{q}") as r:
            return r.read()

    def upload_image(self, path: str, name: str) -> str:
        """Upload a local image into the server's input folder as `name`; returns the name to use. No
        overwrite: ComfyUI keeps an identical file under its name (servers sharing an input folder never
        rewrite a file another one is reading) and renames a different one."""
        boundary = uuid.uuid4().hex
        with open(path, "rb") as fh:
            data = fh.read()
        parts = [(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                  f"Content-Type: application/octet-stream\r\n\r\n").encode(), data,
                 f"\r\n--{boundary}--\r\n".encode()]
        req = urllib.request.Request(self.url + "/upload/image", data=b"".join(parts),
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with self._open(req) as r:
            body = json.loads(r.read())
        return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else body["name"]

    def delete(self, prompt_ids: list[str]) -> None:
        """Remove queued (not yet running) prompts."""
        self.post_json("/queue", {"delete": list(prompt_ids)})

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the running prompt (only `prompt_id` on ComfyUI versions that take one)."""
        self.post_json("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})
