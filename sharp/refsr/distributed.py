"""Data-parallel training for DS-DiT under torchrun (one process per device).

torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; with WORLD_SIZE > 1 `DataParallel` joins the
process group (nccl on CUDA, gloo on CPU), wraps the network in DistributedDataParallel and
gives each rank its slice of the global batch. Without torchrun it is a no-op (one process).
"""
from __future__ import annotations

import os

import torch


class DataParallel:
    def __init__(self, device: str = "cpu"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = str(device)
        self._owned = False
        if self.world > 1:
            import torch.distributed as dist

            cuda = self.device.startswith("cuda")
            if cuda:     # one GPU per process: torchrun's LOCAL_RANK picks it
                self.device = f"cuda:{self.local_rank}"
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if cuda else "gloo")
                self._owned = True

    @property
    def main(self) -> bool:
        """Rank 0: validates, logs and writes the files."""
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=ids)

    def slice(self, batch: int) -> slice:
        """This rank's contiguous part of a global batch of `batch` samples."""
        n = batch // self.world
        return slice(self.rank * n, (self.rank + 1) * n)

    def _tensor(self, values) -> torch.Tensor:
        dev = self.device if self.device.startswith("cuda") else "cpu"
        return torch.tensor(values, dtype=torch.float64, device=dev)

    def agree(self, values: list[float]) -> list[float]:
        """Rank 0's values on every rank (e.g. its clock, for time-based schedules)."""
        if self.world == 1:
            return list(values)
        import torch.distributed as dist

        t = self._tensor(values)
        dist.broadcast(t, 0)
        return t.tolist()

    def mean(self, value: float) -> float:
        """Mean of a per-rank number over the ranks (the global-batch loss)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = self._tensor([value])
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def close(self) -> None:
        if self._owned:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
            self._owned = False
