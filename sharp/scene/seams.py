"""Where the blend keeps the pieces of overlap cells that wait for a neighbouring tile.

A cell in an overlap is blended when its last covering tile arrives; until then the pieces of
the other tiles wait. Whatever the tile order, the waiting pieces form a front as long as the
scene is wide (in row-major order: the bottom overlap strip of a tile row, and the whole last
overlap, up to a tile high, across the scene's width): kept in memory they make the peak grow
with the scene. `DiskSeams` keeps them in an unnamed temporary file in the output's folder
(O_TMPFILE: nothing to clean up, gone when the process ends, even if killed), written with
pwrite and read back with preadv, so they sit in the page cache, not in the process; freed
slots are reused by size, so the file is as large as the widest front (a few tens of MB for a
16k-wide scene). The bits read back are the bits written: the blend is unchanged.
`MemorySeams` keeps them in a dict (tests, small images).
"""
from __future__ import annotations

import os
import tempfile
from typing import Optional

import numpy as np
import torch

Arrays = dict[str, torch.Tensor]


class MemorySeams:
    def __init__(self):
        self._pieces: dict[int, Arrays] = {}
        self._next = 0

    def put(self, arrays: Arrays) -> int:
        self._next += 1
        self._pieces[self._next] = {k: v.clone() for k, v in arrays.items()}
        return self._next

    def get(self, key: int) -> Arrays:
        return self._pieces.pop(key)

    def close(self) -> None:
        self._pieces.clear()


class DiskSeams:
    """Pieces {name: float32 [C, h, w]} in a temporary file in `folder`."""

    def __init__(self, folder):
        self._file = tempfile.TemporaryFile(dir=folder, prefix=".refsr-seams-")
        self._fd = self._file.fileno()
        self._end = 0
        self._free: dict[int, list[int]] = {}          # slot size in bytes -> offsets
        self._index: dict[int, tuple[int, int, list]] = {}
        self._next = 0

    def put(self, arrays: Arrays) -> int:
        if any(v.dtype != torch.float32 for v in arrays.values()):
            raise TypeError(f"seams are float32, got {[v.dtype for v in arrays.values()]}")
        layout = [(k, tuple(v.shape)) for k, v in arrays.items()]
        flat = np.concatenate([v.detach().contiguous().numpy().ravel() for v in arrays.values()])
        size = flat.nbytes
        slots = self._free.get(size)
        offset = slots.pop() if slots else self._end
        if offset == self._end:
            self._end += size
        view = memoryview(flat).cast("B")
        done = 0
        while done < size:                              # pwrite may write less than asked
            done += os.pwrite(self._fd, view[done:], offset + done)
        self._next += 1
        self._index[self._next] = (offset, size, layout)
        return self._next

    def get(self, key: int) -> Arrays:
        offset, size, layout = self._index.pop(key)
        flat = np.empty(size // 4, np.float32)
        view = memoryview(flat).cast("B")
        done = 0
        while done < size:
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n <= 0:
                raise OSError(f"seam file ended after {offset + done} bytes (expected {offset + size})")
            done += n
        self._free.setdefault(size, []).append(offset)
        out, at = {}, 0
        for name, shape in layout:
            n = int(np.prod(shape))
            out[name] = torch.from_numpy(flat[at:at + n].reshape(shape))
            at += n
        return out

    @property
    def file_bytes(self) -> int:
        return self._end

    def close(self) -> None:
        self._index.clear()
        self._file.close()


def open_seams(folder: Optional[os.PathLike]):
    """DiskSeams in `folder`, or MemorySeams for folder None."""
    return MemorySeams() if folder is None else DiskSeams(folder)
