"""Data parallelism with ``torch.distributed``: the few collectives the methods need.

beyondsgd builds no engine of its own: models are wrapped in
``torch.nn.parallel.DistributedDataParallel`` (gloo on CPU, NCCL on GPUs), which all-reduces
(averages) the gradients during ``backward()``. What DDP alone does not give, and where each
method gets it:

* **BPGrad** needs the global loss value :math:`f_t` (Eq. 12): ``BPGrad.step`` averages the
  closure's loss over the ranks; the gradient norm is taken of DDP's averaged gradients.
* **SLBI** reads only gradients, so DDP's averaged gradients make its W/V/Gamma iteration the
  same on every rank.
* **ProxProp** solves :math:`(I/\\tau_\\theta + A^\\top A) d = \\nabla J` with :math:`A` built from
  the layer inputs of the *whole* batch: the Gram products (and the gradient) are summed over
  the ranks inside the layer's backward.
* **GDSolver** gathers its solver points on rank 0, solves the MILP there and broadcasts the
  result; validation losses are summed over the ranks.
* **PHT** masks are per sample and stay on their rank; the frozen-support steps are ordinary
  DDP steps (the registered ``pht_alt``, which runs them through the DDP wrapper). Lightning's
  ``PHTAlternationMixin`` refuses more than one process: its inner steps bypass the wrapper.

Every collective here is a no-op when ``torch.distributed`` is not initialised or has one
process, so the same code runs on one process unchanged.

Batches: with ``W`` processes, the global minibatch of ``B`` samples is split into ``W``
contiguous, nearly equal slices (:func:`shard_bounds`). DDP averages gradients over ranks, which
equals the global mean only for equal slices; :func:`scaled_loss` multiplies a rank's mean loss
by ``W * n_r / B`` so that the average is exact for any split (e.g. a short last batch).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "active",
    "all_gather_rows",
    "all_reduce_sum",
    "broadcast_object",
    "gather_objects",
    "init_from_env",
    "launch_local",
    "local_rows",
    "rank",
    "replica_difference",
    "resolve",
    "scaled_loss",
    "shard_bounds",
    "world_size",
]


def active() -> bool:
    """True when ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def resolve(setting: bool | None) -> bool:
    """Whether to synchronise: ``None`` (auto) -> :func:`active`; ``True`` requires an
    initialised process group (else ``RuntimeError``); ``False`` never synchronises."""
    if setting is None:
        return active()
    if not isinstance(setting, bool):
        raise ValueError(f"distributed must be None (auto), True or False, got {setting!r}")
    if setting and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("distributed=True but torch.distributed is not initialised: call "
                           "torch.distributed.init_process_group first (torchrun sets it up)")
    return setting and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def shard_bounds(n: int, world: int, r: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``r``'s contiguous slice of ``n`` rows split into ``world``
    nearly equal parts (the first ``n % world`` ranks get one row more, as
    ``torch.tensor_split``)."""
    if world < 1 or not 0 <= r < world:
        raise ValueError(f"need 0 <= rank < world_size, got rank {r}, world_size {world}")
    q, rem = divmod(int(n), world)
    start = r * q + min(r, rem)
    return start, start + q + (1 if r < rem else 0)


def local_rows(x: torch.Tensor, world: int | None = None, r: int | None = None) -> torch.Tensor:
    """This rank's contiguous slice of the rows of ``x`` (all of ``x`` on one process)."""
    world = world_size() if world is None else world
    r = rank() if r is None else r
    start, stop = shard_bounds(x.shape[0], world, r)
    return x[start:stop]


def scaled_loss(loss: torch.Tensor, n_local: int, n_global: int, world: int) -> torch.Tensor:
    """Scale a rank's mean loss over ``n_local`` samples so that DDP's average over ``world``
    ranks equals the mean over all ``n_global`` samples: ``loss * world * n_local / n_global``."""
    if world == 1 or n_local * world == n_global:
        return loss
    return loss * (world * n_local / n_global)


def scaled_loss_fn(loss_fn, n_local: int, n_global: int, world: int):
    """``loss_fn`` with a rank's loss scaled by :func:`scaled_loss`, so that DDP's gradient
    average is the global batch mean; an empty slice contributes zero."""
    def scaled(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if n_local == 0:
            return out.sum() * 0.0  # keeps every parameter in the graph for DDP
        return scaled_loss(loss_fn(out, y), n_local, n_global, world)
    return scaled


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks, in place (no-op on one process); returns ``t``."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``t`` concatenated in rank order, on every rank (any row counts;
    ``t`` itself on one process)."""
    if not active():
        return t
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, t.detach().cpu())
    return torch.cat(parts).to(t.device)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled; for small control data)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any, dst: int = 0) -> list[Any] | None:
    """The list of every rank's ``obj`` (rank order) on rank ``dst``; ``None`` elsewhere."""
    if not active():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


@torch.no_grad()
def replica_difference(model: nn.Module) -> float:
    """Largest absolute difference between this rank's parameters and buffers and rank 0's
    (0.0 on one process). Every rank must call it. DDP keeps replicas identical; a non-zero
    value means some method step ran differently on some rank."""
    if not active():
        return 0.0
    tensors = [t.detach() for t in list(model.parameters()) + list(model.buffers())
               if torch.is_floating_point(t)]
    if not tensors:
        return 0.0
    flat = torch.cat([t.reshape(-1).double() for t in tensors])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


def init_from_env(device: str | torch.device | None = None) -> torch.device:
    """Initialise the default process group from torchrun's environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and return this process's
    device: ``cuda:LOCAL_RANK`` with NCCL when ``device`` is CUDA (or ``None`` and CUDA is
    available), else ``cpu`` with gloo. A no-op returning the device when ``WORLD_SIZE`` is unset
    or 1, or the group is already initialised."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return want
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if want.type == "cuda":
        want = torch.device("cuda", local)
        torch.cuda.set_device(want)
        dist.init_process_group("nccl", device_id=want)
    else:
        dist.init_process_group("gloo")
    return want


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launched(r: int, fn: Any, world: int, port: int, threads: int | None, args: tuple) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if threads is not None:
        torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=r,
                            world_size=world)
    try:
        fn(r, *args)
    finally:
        dist.destroy_process_group()


_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def launch_local(fn: Any, world_size: int, *args: Any, threads: int | None = 1) -> None:
    """Run ``fn(rank, *args)`` in ``world_size`` new processes on this machine, each with the
    default process group initialised (gloo over 127.0.0.1) -- data parallelism without
    ``torchrun``, for tests and quick experiments. ``fn`` must be importable (a module-level
    function). ``threads`` (default 1, as torchrun) sets each process's thread count: torch's
    (``torch.set_num_threads``) and, in the environment the processes start with, OpenMP's and
    MKL's (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``; this process's environment is restored
    afterwards); ``None`` leaves both as inherited. Raises if any process fails."""
    import torch.multiprocessing as mp

    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be None or an int >= 1, got {threads!r}")
    with restored_environ(_THREAD_VARS):
        if threads is not None:  # the spawned interpreters read these before importing torch
            os.environ.update({k: str(threads) for k in _THREAD_VARS})
        mp.spawn(_launched, args=(fn, world_size, _free_port(), threads, args),
                 nprocs=world_size, join=True)


@contextlib.contextmanager
def restored_environ(names: tuple[str, ...]) -> Iterator[None]:
    """Restore the environment variables ``names`` (set or unset) as they were on entry."""
    saved = {k: os.environ.get(k) for k in names}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
