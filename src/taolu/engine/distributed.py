"""Training on several processes with PyTorch's own engine: torchrun starts them, this module
joins them into a process group (gloo on CPU, NCCL on GPU) and sums what they count."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from taolu.errors import ConfigError


@dataclass(frozen=True)
class Cluster:
    """Where this process stands among the ones torchrun started (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the run directory, TensorBoard, checkpoints and the report."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


SINGLE_PROCESS = Cluster()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def join_cluster(device: torch.device) -> Cluster:
    """Join the process group torchrun set up through its environment variables, once; a
    process not started by torchrun is a cluster of one."""
    if not launched_by_torchrun():
        return Cluster()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            store=_store_for_this_attempt(rank, world_size),
            rank=rank,
            world_size=world_size,
        )
    return Cluster(rank, world_size, local_rank)


def _store_for_this_attempt(rank: int, world_size: int) -> dist.Store:
    """torchrun's key-value store, under a prefix of its own for each restart: with the
    default `env://` set-up, processes restarted by `--max-restarts` read the killed round's
    addresses and fail to connect or hang (seen in 3 of 5 tries with gloo; 0 of 4 with this)."""
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    agent_hosts_it = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=rank == 0 and not agent_hosts_it,
    )
    return dist.PrefixStore(f"taolu/attempt_{attempt}", store)


def leave_cluster(cluster: Cluster) -> None:
    if cluster.active and dist.is_initialized():
        dist.destroy_process_group()


def device_for(device: torch.device, cluster: Cluster) -> torch.device:
    """Each process of a GPU cluster drives its own GPU: cuda:LOCAL_RANK."""
    if cluster.active and device.type == "cuda":
        if cluster.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"process {cluster.rank} needs GPU {cluster.local_rank}, but only "
                f"{torch.cuda.device_count()} are visible; start at most that many per node"
            )
        return torch.device("cuda", cluster.local_rank)
    return device


def sum_across(cluster: Cluster, *values: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor summed over every process (unchanged for a cluster of one)."""
    if not cluster.active:
        return list(values)
    summed = []
    for value in values:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        summed.append(value)
    return summed


def all_agree(cluster: Cluster, flag: bool) -> bool:
    """True only when `flag` is true in every process: a decision all of them take together
    (a process that stopped alone would leave the others waiting forever)."""
    if not cluster.active:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        value = value.cuda()
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def gather_to_main(cluster: Cluster, item: Any) -> list[Any] | None:
    """Every process's `item`, in rank order, on rank 0 (None elsewhere)."""
    if not cluster.active:
        return [item]
    gathered: list[Any] | None = [None] * cluster.world_size if cluster.is_main else None
    dist.gather_object(item, gathered, dst=0)
    return gathered


def share_from_main(cluster: Cluster, item: Any) -> Any:
    """Rank 0's `item`, in every process (e.g. the run directory rank 0 created)."""
    if not cluster.active:
        return item
    holder = [item if cluster.is_main else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def buffers_from_main(cluster: Cluster, module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) into every process's `module`.
    DDP broadcasts them at the start of each training forward, so after the last step each
    process holds statistics updated by its own last batch; evaluating with those would score
    weights that differ from the checkpoint rank 0 saves."""
    if not cluster.active:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def barrier(cluster: Cluster) -> None:
    if cluster.active:
        dist.barrier()
