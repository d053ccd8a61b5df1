"""One run on several processes (``torchrun --nproc-per-node N -m kdbench run ...`` or ``--ddp N``).

torchrun starts N copies of the command. Every copy expands and validates the same grid; rank 0
is the driver (it reuses records, takes the run-folder locks, writes records, histories and
checkpoints) and, for each cell it trains, hands the job to the other ranks, which train it with
it. Within a cell each rank builds the same model from the same seed, draws the same global batch
(same shuffle, same augmentation) and keeps its slice of it; DistributedDataParallel averages the
student's gradients, so a step is the single-process step on the whole global batch, up to float
rounding (and BatchNorm statistics, which are per slice on the CPU; SyncBatchNorm on CUDA).
Every rank evaluates the whole validation and test split, so all ranks agree on the best epoch.

Methods with one optimizer over the student alone run under DDP; the others (a generator or
discriminator of their own, a trainable regressor) are refused before the cell trains.
"""
import datetime
import os

import torch
import torch.distributed as dist

from kdbench.errors import ConfigError


def launched():
    """True in a process that torchrun started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank():
    return dist.get_rank() if active() else 0


def world_size():
    return dist.get_world_size() if active() else 1


def is_main():
    return rank() == 0


def init(device_option):
    """Join the process group torchrun set up: NCCL on GPUs (one per local rank), gloo on CPUs."""
    if device_option == "cuda" or (device_option == "auto" and torch.cuda.is_available()):
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"torchrun started local rank {local_rank} but torch sees {torch.cuda.device_count()} GPU(s); "
                              "start at most one process per GPU")
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    # generous: the other ranks wait while rank 0 trains the grid's teachers, possibly for hours
    dist.init_process_group(backend, timeout=datetime.timedelta(days=1))


def device(device):
    """This rank's device: its own GPU under DDP, the CPU as it is."""
    if active() and device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def check_batch(batch_size):
    if batch_size % world_size():
        raise ConfigError(f"train.batch_size={batch_size} must be a multiple of the {world_size()} DDP processes "
                          "(each takes an equal slice of the global batch)")


def shard(batch):
    """This rank's slice of a global batch (a tuple of tensors split along the first dimension)."""
    return tuple(t.tensor_split(world_size())[rank()] for t in batch)


def wrap(module, device):
    from torch.nn.parallel import DistributedDataParallel

    # buffers are not broadcast on every forward: no collective hides in evaluation or timing
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


def all_finite(loss):
    """Whether the loss is finite on every rank (so that all ranks fail a step together)."""
    flag = torch.isfinite(loss.detach()).all().to(torch.int32).reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def mean(value, device):
    """The mean over ranks of a per-rank number (a loss summed over this rank's steps)."""
    tensor = torch.as_tensor(value, dtype=torch.float64, device=device).detach().clone().reshape(1)
    dist.all_reduce(tensor)
    return tensor.item() / world_size()


def broadcast(obj=None):
    """Rank 0's ``obj`` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier():
    if active():
        dist.barrier()


def finish():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
