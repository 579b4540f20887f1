"""Process groups, the nanoGPT way: read RANK / WORLD_SIZE from the environment and fall back to one process.

    trm-kaggle run ...                                          # one process (CPU or one GPU)
    torchrun --standalone --nproc-per-node 4 -m trm_kaggle.cli run ...   # 4 GPUs: NCCL; on CPU: gloo

The trunk is data-parallel (gradients summed), task-embedding rows are all-gathered, and inference is sharded by
(task, variant) with votes gathered at the end. Every collective here is a no-op in a single process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()


def init_distributed(device: str | None = None) -> DistInfo:
    """Start the process group when launched by torchrun; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device in (None, "auto") else str(device).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        # torch waits 10-30 min on a collective whose peer is gone; TRM_KAGGLE_DIST_TIMEOUT (seconds) shortens it.
        timeout = os.environ.get("TRM_KAGGLE_DIST_TIMEOUT")
        extra = {"timeout": datetime.timedelta(seconds=float(timeout))} if timeout else {}
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", **extra)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def all_reduce_sum_(tensors: list[torch.Tensor], info: DistInfo) -> None:
    """Sum gradients over ranks in one flat buffer (one collective instead of one per parameter)."""
    if not info.active or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def all_gather_rows(ids: torch.Tensor, rows: torch.Tensor, info: DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate every rank's (ids [n], rows [n, D]) in rank order; every rank holds the same n."""
    if not info.active:
        return ids, rows
    id_parts = [torch.empty_like(ids) for _ in range(info.world_size)]
    row_parts = [torch.empty_like(rows) for _ in range(info.world_size)]
    dist.all_gather(id_parts, ids)
    dist.all_gather(row_parts, rows.contiguous())
    return torch.cat(id_parts), torch.cat(row_parts)


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    if not info.active:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    if not info.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if it is true on any (a stop request, a NaN) so that ranks never diverge in control flow."""
    if not info.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.active:
        dist.destroy_process_group()
