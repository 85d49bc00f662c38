"""How a process that runs tiles treats its heap (glibc's malloc; a no-op elsewhere).

A tile allocates and frees arrays of the same few sizes every time. Two policies:
  release_memory   hand every freed page back to the OS (malloc_trim). Right for the driver
                   and for a process that is not ours (ComfyUI's server): its memory falls
                   back after the work. Wrong after every tile of a worker: the next tile
                   faults the same pages in again, zeroed by the kernel (at 464^2 about 230 MB
                   and 0.1 CPU s per tile, 13 % of the shipped model's tile).
  WarmHeap         for a Ray worker, a process that does nothing but tiles: keep the heap a
                   tile needs, from brk only (glibc would mmap arrays over 32 MB afresh for
                   every tile), and trim only when the memory a tile leaves behind has grown
                   by more than `slack` (5 %) over what the first `settle` tiles of that shape
                   left (the heap's layout settles over the first few): a long run's memory
                   cannot creep by more (10 % let a worker's heap drift up by ~30 MiB over a
                   16k^2 scene's 1369 tiles, a third of the memory goal's margin), and a
                   run that does not creep faults almost nothing after its first tiles
                   (benchmarks/refsr_scene.py; docs/scene.md, "Performance").
"""
from __future__ import annotations

import ctypes
import os
from typing import Optional

M_TRIM_THRESHOLD = -1          # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _libc():
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL("libc.so.6")
            _lib = lib if hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt") else False
        except OSError:
            _lib = False
    return _lib


_lib = None


def release_memory() -> None:
    """Hand freed heap memory back to the OS (malloc_trim(0))."""
    lib = _libc()
    if lib:
        lib.malloc_trim(0)


def private_bytes() -> Optional[int]:
    """This process's resident private memory (resident - shared pages, /proc/self/statm);
    None where there is no /proc."""
    try:
        with open("/proc/self/statm") as f:
            fields = f.read().split()
        return (int(fields[1]) - int(fields[2])) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


class WarmHeap:
    """Keeps a worker's heap warm between tiles, bounded: call after_tile() after each."""

    def __init__(self, slack: float = 0.05, settle: int = 3):
        self.slack, self.settle = slack, settle
        self.base: dict[tuple, list[int]] = {}   # tile shape -> [most private bytes, tiles seen]
        self.trims = 0
        lib = _libc()
        # no mmap for large arrays, no automatic trim below 1 GiB at the top of the heap
        self.active = bool(lib) and lib.mallopt(M_MMAP_MAX, 0) == 1 and \
            lib.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1

    def after_tile(self, shape: tuple) -> None:
        if not self.active:
            release_memory()
            return
        now = private_bytes()
        if now is None:
            return
        base = self.base.setdefault(tuple(shape), [now, 0])
        base[1] += 1
        if base[1] <= self.settle:
            base[0] = max(base[0], now)
        elif now > base[0] * (1 + self.slack):
            release_memory()
            self.trims += 1
