"""Resume journal: which cells of the output are safely on disk, beside the output.

`OUT.refsr-journal` is JSON lines: a header {"journal": 1, "fingerprint": {...}} that pins
everything the pixels depend on (inputs' size and mtime, checkpoint, options, grid, plan), then
one {"cells": [...]} line per commit. A commit is appended (and fsynced) only after the partial
output was flushed to disk, so every cell listed is really there; cells written after the last
commit are simply done again on resume (same bits). --resume refuses a journal whose
fingerprint differs from the new run's and says which entry changed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import SceneError

VERSION = 1


def journal_path(out: Path) -> Path:
    return Path(str(out) + ".refsr-journal")


def partial_path(out: Path) -> Path:
    return Path(str(out) + ".partial")


def file_id(path) -> dict:
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class Journal:
    def __init__(self, path: Path):
        self.path = Path(path)

    def start(self, fingerprint: dict) -> None:
        with open(self.path, "w") as f:
            f.write(json.dumps({"journal": VERSION, "fingerprint": fingerprint}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def load(self, fingerprint: dict) -> set[int]:
        """Cells recorded by an earlier run with the same fingerprint."""
        if not self.path.is_file():
            raise SceneError(f"--resume: no journal {self.path} (nothing to resume): run without "
                             "--resume")
        lines = self.path.read_text().splitlines()
        try:
            head = json.loads(lines[0])
        except (IndexError, json.JSONDecodeError):
            raise SceneError(f"--resume: {self.path} is not a refsr-scene journal") from None
        if head.get("journal") != VERSION:
            raise SceneError(f"--resume: {self.path} has journal version {head.get('journal')!r}, "
                             f"this code writes {VERSION}")
        old = head.get("fingerprint", {})
        changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        if changed:
            k = changed[0]
            raise SceneError(f"--resume: the run differs from the interrupted one in {changed} "
                             f"(e.g. {k}: was {old.get(k)!r}, now {fingerprint.get(k)!r}); rerun "
                             "with the same inputs and options, or start over with --overwrite")
        done: set[int] = set()
        for line in lines[1:]:
            try:
                done.update(json.loads(line)["cells"])
            except (json.JSONDecodeError, KeyError, TypeError):
                break           # a torn last line (killed mid-append): ignore it and the rest
        return done

    def commit(self, cells: list[int]) -> None:
        if not cells:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"cells": sorted(cells)}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
