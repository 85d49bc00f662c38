"""The progress bar: rows done / failed / in flight and images per minute (tqdm, to stderr)."""
from __future__ import annotations

import time


class Progress:
    def __init__(self, total: int, enabled: bool = True):
        self.start = time.time()
        self.done = self.failed = self.inflight = self.images = 0
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="batch", unit="row", dynamic_ncols=True)

    def update(self, done=0, failed=0, images=0, inflight=None) -> None:
        self.done += done
        self.failed += failed
        self.images += images
        if inflight is not None:
            self.inflight = inflight
        if self.bar is not None:
            self.bar.set_postfix_str(self.text(), refresh=False)
            self.bar.update(done + failed)

    def images_per_min(self) -> float:
        elapsed = time.time() - self.start
        return 60.0 * self.images / elapsed if elapsed > 0 else 0.0

    def text(self) -> str:
        return (f"done {self.done}, failed {self.failed}, in flight {self.inflight}, "
                f"{self.images_per_min():.1f} img/min")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
