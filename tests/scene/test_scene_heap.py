"""sharp.scene.heap: a worker's heap stays warm between tiles (no page faults after the first
tile) and is still trimmed when what a tile leaves behind grows. Each case runs in its own
Python process: the policy changes glibc's malloc for the whole process."""
import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="glibc malloc and /proc: Linux only")

TILES = """
import json, resource, torch
from sharp.scene.heap import WarmHeap, release_memory, private_bytes

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def tile(mb):                     # a tile's temporaries: one 48 MB and a few small arrays
    a = torch.ones(mb << 18)      # float32: mb MiB
    b = [torch.ones(1000) for _ in range(50)]
    return float(a[::4096].sum()) + len(b)
"""


def run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(TILES + code)],
                         capture_output=True, text=True, timeout=120, cwd=".")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_warm_heap_faults_nothing_after_the_first_tile():
    warm = run("""
heap = WarmHeap()
per = []
for i in range(6):
    f = faults(); tile(48); heap.after_tile((464, 464)); per.append(faults() - f)
print(json.dumps({"active": heap.active, "per": per, "trims": heap.trims}))
""")
    trim = run("""
per = []
for i in range(6):
    f = faults(); tile(48); release_memory(); per.append(faults() - f)
print(json.dumps({"per": per}))
""")
    pages = (48 << 20) // 4096
    assert warm["active"] and warm["trims"] == 0
    assert warm["per"][0] > pages / 2                     # the first tile faults its pages in
    assert max(warm["per"][3:]) < pages / 20              # once settled, tiles reuse them
    assert min(trim["per"][1:]) > pages / 2               # trimming every tile faults them again


def test_warm_heap_trims_when_a_tile_leaves_more_behind():
    r = run("""
heap = WarmHeap(slack=0.10)
keep = []
for i in range(6):                    # the same tiles: no trim
    tile(48); heap.after_tile((464, 464))
quiet, base = heap.trims, private_bytes()
big = torch.ones(192 << 18); keep.append(torch.ones(1000)); del big  # freed, below a live array
grown = private_bytes()
heap.after_tile((464, 464))
print(json.dumps({"quiet": quiet, "trims": heap.trims, "base": base, "grown": grown,
                  "after": private_bytes()}))
""")
    assert r["quiet"] == 0
    assert r["grown"] > r["base"] + (100 << 20)           # the freed 192 MB stayed resident
    assert r["trims"] == 1 and r["after"] < r["grown"] - (100 << 20)   # and went back
