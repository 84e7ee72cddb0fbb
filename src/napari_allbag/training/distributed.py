"""Data-parallel training across processes: torchrun's environment, the process group, reductions.

`torchrun` (or `napari-allbag train --gpus N`) starts one process per GPU and tells each its
place in RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. `process_group()` reads them,
joins the group (NCCL on GPUs, gloo on CPU, with a timeout so that a process that dies or hangs
makes the others stop with an error instead of waiting for ever) and gives a `Distributed`
context; without torchrun it gives the single-process context, whose helpers do nothing, so the
trainer has one code path.

Rules the trainer keeps with these helpers:

- only the main process (rank 0) reads and writes the run folder; what the others need from it
  (the settings, checkpoints, cached features) they receive by broadcast (`share`,
  `broadcast_tensors`), so every rank resumes from the same checkpoint;
- work that only the main process does (building the crop cache) runs in `share_work`: the others
  wait, receiving a heartbeat every few seconds, then its result (or its error);
- the batch size is the GLOBAL batch size; `DistributedSampler` gives each rank an interleaved
  share of every global batch (rank r gets the positions r, r + W, ...), so a run on W processes
  sees the same batches as a run on one;
- metrics are summed over the ranks (`all_reduce_sum`) so every rank takes the same schedule
  decisions.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from napari_allbag.defaults import DEFAULT_DIST_TIMEOUT_S
from napari_allbag.progress import Progress
from napari_allbag.training.config import TrainingError

T = TypeVar("T")

#: Seconds a process waits for the others in any collective operation before it gives up.
DEFAULT_TIMEOUT_S = DEFAULT_DIST_TIMEOUT_S
#: Test hook, see `fault_point`: "exit:RANK:STAGE:EPOCH", "hang:RANK:STAGE:EPOCH" or
#: "interrupt:STAGE:EPOCH".
FAULT_ENV = "NAPARI_ALLBAG_FAULT"
#: Set by `napari-allbag train --gpus N` for the processes it starts (the resume hint uses it).
GPUS_ENV = "NAPARI_ALLBAG_GPUS"
#: Exit status of a rank stopped by the FAULT_ENV hook.
FAULT_EXIT_STATUS = 17

_DIST_ERROR_MARKERS = (
    "gloo",
    "nccl",
    "connection",
    "timed out",
    "timeout",
    "peer",
    "broken pipe",
    "socket",
    "process group",
)


class DistributedError(TrainingError):
    """The processes of a data-parallel run lost each other (one died, hung or failed to start)."""


class ForwardedError(TrainingError):
    """An error of the main process, raised again on the other ranks (which do not print it)."""


@dataclass(frozen=True)
class LaunchEnv:
    """This process's place in a torchrun launch (from its environment variables)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv | None:
    """The torchrun environment of this process, or None when it was not started by torchrun."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ or "RANK" not in environ:
        return None
    try:
        world = int(environ["WORLD_SIZE"])
        rank = int(environ["RANK"])
        local_rank = int(environ.get("LOCAL_RANK", rank))
        local_world = int(environ.get("LOCAL_WORLD_SIZE", world))
    except ValueError as error:
        raise DistributedError(
            f"The torchrun environment is invalid ({error}): RANK, WORLD_SIZE and LOCAL_RANK must "
            "be whole numbers. Start the training with torchrun or napari-allbag train --gpus N."
        ) from None
    if world < 1 or not 0 <= rank < world or local_rank < 0:
        raise DistributedError(
            f"The torchrun environment is invalid: RANK={rank}, WORLD_SIZE={world}, "
            f"LOCAL_RANK={local_rank}."
        )
    return LaunchEnv(rank, world, local_rank, local_world)


def process_device(device_name: str | None, env: LaunchEnv) -> torch.device:
    """The device of this process: its own GPU (cuda:LOCAL_RANK) or the CPU."""
    name = (device_name or "").strip().lower()
    if name in ("", "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    kind = name.split(":", 1)[0]
    if kind == "cpu":
        return torch.device("cpu")
    if kind != "cuda":
        raise DistributedError(
            f"--device {device_name} cannot train with several processes: use cuda (one GPU per "
            "process, NCCL) or cpu (gloo)."
        )
    if ":" in name and env.local_world_size > 1:
        raise DistributedError(
            f"--device {device_name} names one GPU, but torchrun started {env.local_world_size} "
            "processes on this machine: each uses the GPU of its LOCAL_RANK. Use --device cuda "
            "(or leave it out) and choose the GPUs with CUDA_VISIBLE_DEVICES."
        )
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if env.local_rank >= count:
        raise DistributedError(
            f"Process {env.rank} (LOCAL_RANK {env.local_rank}) has no GPU: this machine shows "
            f"{count}. Start at most {count} processes per machine (--nproc_per_node), or train "
            "on the CPU with --device cpu."
        )
    return torch.device("cuda", env.local_rank)


def is_distributed_failure(error: BaseException) -> bool:
    """Whether `error` says that the processes lost each other (rather than a bug or bad data)."""
    if isinstance(error, DistributedError):
        return True
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(error, dist_error):
        return True
    if isinstance(error, RuntimeError):
        text = str(error).lower()
        return any(marker in text for marker in _DIST_ERROR_MARKERS)
    return False


def lost_contact(error: BaseException, where: str, rank: int, timeout_s: float) -> DistributedError:
    """The clear error a rank raises when a collective operation fails."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return DistributedError(
        f"Process {rank} lost contact with the other training processes during {where} "
        f"({reason[:300]}). Another process stopped or hung (its own output says why), or did not "
        f"answer within the timeout of {timeout_s:g} s. Every finished epoch is saved; continue "
        "the run with --resume once all processes can start again."
    )


class _Sized:
    """A stand-in dataset for `DistributedSampler`, which only needs its length."""

    def __init__(self, n: int):
        self.n = int(n)

    def __len__(self) -> int:
        return self.n


@dataclass
class Distributed:
    """One process's view of a data-parallel run; the single-process context does nothing.

    rank/world_size: this process's place in its group; local_rank/local_world_size: on its
    machine (torchrun's LOCAL_RANK, LOCAL_WORLD_SIZE); device: its device; backend: "nccl",
    "gloo" or None (single process); timeout_s: how long a collective operation waits.
    group: the process group (None: all processes); members: the global ranks of the group (its
    rank 0 is the group's main process); control_group: the gloo group of the same processes for
    small messages (JSON) when the tensors go through NCCL. `split` makes subgroups.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    control_group: Any = None
    group: Any = None
    members: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.members:
            self.members = tuple(range(self.world_size))

    @classmethod
    def single(cls, device: torch.device | str | None = None) -> Distributed:
        return cls(device=torch.device(device) if device is not None else torch.device("cpu"))

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def heartbeat_s(self) -> float:
        """How often the main process tells the others it is still working alone."""
        return max(0.5, min(30.0, self.timeout_s / 4))

    @property
    def global_rank(self) -> int:
        return self.members[self.rank]

    @property
    def _tensor_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def split(self, parts: int) -> Distributed:
        """This rank's share of `parts` subgroups of consecutive ranks (the first ones larger).

        Every rank must call it (each subgroup is created by all processes, in the same order).
        """
        if not 1 <= parts <= self.world_size:
            raise DistributedError(f"Cannot split {self.world_size} processes into {parts} groups.")
        sizes = [self.world_size // parts + (i < self.world_size % parts) for i in range(parts)]
        mine = None
        start = 0
        for size in sizes:
            members = self.members[start : start + size]
            group = control = None
            if self.is_distributed:
                with self.guard("creating process groups"):
                    group = dist.new_group(list(members), timeout=timedelta(seconds=self.timeout_s))
                    control = (
                        dist.new_group(
                            list(members),
                            backend="gloo",
                            timeout=timedelta(seconds=self.timeout_s),
                        )
                        if self.backend == "nccl"
                        else group
                    )
            if start <= self.rank < start + size:
                mine = Distributed(
                    rank=self.rank - start,
                    world_size=size,
                    local_rank=self.local_rank,
                    local_world_size=self.local_world_size,
                    device=self.device,
                    backend=self.backend,
                    timeout_s=self.timeout_s,
                    control_group=control,
                    group=group,
                    members=tuple(members),
                )
            start += size
        return mine

    # ------------------------------------------------------------------------- collectives

    @contextlib.contextmanager
    def guard(self, where: str) -> Iterator[None]:
        """Turn a failed collective operation into a `DistributedError` naming `where`."""
        try:
            yield
        except DistributedError:
            raise
        except Exception as error:
            if self.is_distributed and is_distributed_failure(error):
                raise lost_contact(error, where, self.global_rank, self.timeout_s) from error
            raise

    def all_reduce_sum(self, values: Sequence[float], where: str = "a reduction") -> list[float]:
        """The sums over all ranks of `values` (float64), the same on every rank."""
        if not self.is_distributed:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
        with self.guard(where):
            tensor = tensor.to(self._tensor_device)
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return [float(v) for v in tensor.cpu().tolist()]

    def all_gather_json(self, value: Any, where: str = "exchanging messages") -> list[Any]:
        """Every rank's `value` (JSON-able), in rank order, on every rank."""
        if not self.is_distributed:
            return [value]
        return [self.broadcast_json(value, where, source=rank) for rank in range(self.world_size)]

    def all_reduce_tensor(self, tensor: torch.Tensor, where: str = "a reduction") -> torch.Tensor:
        """`tensor` summed over all ranks, in place on its device (no wait for the device)."""
        if self.is_distributed:
            with self.guard(where):
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor

    def broadcast_json(
        self, value: Any, where: str = "a message from rank 0", source: int = 0
    ) -> Any:
        """Rank `source`'s `value` (JSON-able) on every rank; the others pass anything."""
        if not self.is_distributed:
            return value
        sending = self.rank == source
        with self.guard(where):
            payload = json.dumps(value, default=_json_default).encode("utf-8") if sending else b""
            size = torch.tensor([len(payload)], dtype=torch.int64)
            src = self.members[source]
            dist.broadcast(size, src=src, group=self.control_group)
            data = (
                torch.frombuffer(bytearray(payload), dtype=torch.uint8)
                if sending
                else torch.empty(int(size.item()), dtype=torch.uint8)
            )
            if int(size.item()):
                dist.broadcast(data, src=src, group=self.control_group)
        return value if sending else json.loads(bytes(data.numpy()).decode("utf-8"))

    def broadcast_tensors(
        self,
        tensors: Mapping[str, torch.Tensor] | None,
        where: str = "sharing tensors",
        source: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Rank `source`'s named tensors on every rank (on the CPU), one transfer per dtype."""
        if not self.is_distributed:
            return dict(tensors or {})
        sending = self.rank == source
        spec = None
        if sending:
            spec = [[k, _dtype_name(v.dtype), list(v.shape)] for k, v in (tensors or {}).items()]
        spec = self.broadcast_json(spec, where, source)
        result: dict[str, torch.Tensor] = {}
        for dtype_name in sorted({entry[1] for entry in spec}):
            dtype = _dtype(dtype_name)
            wire = torch.uint8 if dtype == torch.bool else dtype
            entries = [entry for entry in spec if entry[1] == dtype_name]
            counts = [int(np.prod(shape)) for _, _, shape in entries]
            if sending:
                flat = torch.cat(
                    [tensors[name].detach().reshape(-1).to("cpu", wire) for name, _, _ in entries]
                )
            else:
                flat = torch.empty(sum(counts), dtype=wire)
            with self.guard(where):
                flat = flat.to(self._tensor_device)
                dist.broadcast(flat, src=self.members[source], group=self.group)
                flat = flat.cpu()
            for (name, _, shape), part in zip(entries, flat.split(counts), strict=True):
                result[name] = part.to(dtype).reshape(shape).clone()
        return result

    def share(
        self,
        work: Callable[[], T],
        encode: Callable[[T], Any] = lambda value: value,
        decode: Callable[[Any], T] = lambda value: value,
        where: str = "work of rank 0",
    ) -> T:
        """Run `work()` on the main process only; its JSON-encoded result (or error) on every rank."""
        if not self.is_distributed:
            return work()
        if self.is_main:
            try:
                value = work()
            except Exception as error:
                self._send_failure(error, where)
                raise
            self.broadcast_json({"state": "done", "value": encode(value)}, where)
            return value
        return decode(self._receive_outcome(where))

    def share_work(
        self,
        work: Generator[Progress, None, T],
        encode: Callable[[T], Any],
        decode: Callable[[Any], T],
        stage: str,
        where: str,
    ) -> Generator[Progress, None, T]:
        """Drive a long generator on the main process only; the others wait with heartbeats.

        The main process yields the work's events and, every `heartbeat_s` seconds, tells the
        others how far it got (so a long preprocessing never trips the timeout, while a main
        process that dies still makes the others stop within it). Returns the result everywhere.
        """
        if not self.is_distributed:
            return (yield from work)
        if not self.is_main:
            while True:
                message = self.broadcast_json(None, where)
                if message.get("state") == "working":
                    yield Progress(
                        message.get("done", 0),
                        message.get("total"),
                        stage,
                        f"rank 0: {message.get('message', where)}",
                    )
                    continue
                return decode(_outcome_value(message, where))
        last = time.monotonic()
        try:
            while True:
                try:
                    event = next(work)
                except StopIteration as stop:
                    result = stop.value
                    break
                yield event
                if time.monotonic() - last >= self.heartbeat_s:
                    status = {
                        "state": "working",
                        "done": event.done,
                        "total": event.total,
                        "message": event.message or where,
                    }
                    self.broadcast_json(status, where)
                    last = time.monotonic()
        except Exception as error:
            if not isinstance(error, DistributedError):
                self._send_failure(error, where)
            raise
        finally:
            work.close()
        self.broadcast_json({"state": "done", "value": encode(result)}, where)
        return result

    def _send_failure(self, error: Exception, where: str) -> None:
        """Tell the waiting ranks that the main process failed (best effort)."""
        with contextlib.suppress(Exception):
            self.broadcast_json(
                {"state": "error", "type": type(error).__name__, "message": str(error)}, where
            )

    def _receive_outcome(self, where: str) -> Any:
        return _outcome_value(self.broadcast_json(None, where), where)

    def gather_interleaved(self, tensor: torch.Tensor, where: str = "gathering") -> torch.Tensor:
        """Every rank's rows put back in order: rank r's rows are positions r, r + W, ... (CPU)."""
        if not self.is_distributed:
            return tensor.detach().cpu()
        tensor = tensor.detach()
        with self.guard(where):
            local = tensor.to(self._tensor_device)
            count = torch.tensor([local.shape[0]], dtype=torch.int64, device=self._tensor_device)
            counts = [torch.zeros_like(count) for _ in range(self.world_size)]
            dist.all_gather(counts, count, group=self.group)
            sizes = [int(c.item()) for c in counts]
            most = max(sizes)
            padded = torch.zeros((most, *local.shape[1:]), dtype=local.dtype, device=local.device)
            padded[: local.shape[0]] = local
            parts = [torch.empty_like(padded) for _ in range(self.world_size)]
            dist.all_gather(parts, padded.contiguous(), group=self.group)
        total = sum(sizes)
        out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
        for rank, (part, size) in enumerate(zip(parts, sizes, strict=True)):
            out[rank :: self.world_size] = part[:size].cpu()
        return out

    def sync_buffers(self, module: nn.Module, where: str = "sharing BatchNorm statistics") -> None:
        """Give every rank the main process's buffers (BatchNorm running statistics)."""
        if not self.is_distributed:
            return
        buffers = [b for b in module.buffers() if b.numel()]
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for buffer in buffers:
            by_dtype.setdefault(buffer.dtype, []).append(buffer)
        with self.guard(where), torch.no_grad():
            for group in by_dtype.values():
                flat = torch.cat([b.reshape(-1) for b in group]).to(self._tensor_device)
                dist.broadcast(flat, src=self.members[0], group=self.group)
                for buffer, part in zip(group, flat.split([b.numel() for b in group]), strict=True):
                    buffer.copy_(part.reshape(buffer.shape))

    def check_same_weights(self, module: nn.Module, what: str) -> None:
        """Raise when the ranks' copies of `module`'s parameters differ (they never should)."""
        if not self.is_distributed:
            return
        with torch.no_grad():
            total = sum(
                (p.detach().double().sum() for p in module.parameters()),
                torch.zeros((), dtype=torch.float64, device=self.device),
            )
        value = float(total)
        # the same numbers summed the same way: any difference means the copies differ
        values = torch.tensor([value, -value], dtype=torch.float64)
        with self.guard(f"checking {what}"):
            values = values.to(self._tensor_device)
            dist.all_reduce(values, op=dist.ReduceOp.MAX, group=self.group)
        highest, lowest = float(values[0]), -float(values[1])
        if highest != lowest:
            raise DistributedError(
                f"The processes hold different weights for {what} (checksums {lowest!r} to "
                f"{highest!r}); the data-parallel training went wrong. Please report this."
            )

    # ------------------------------------------------------------------------- data

    def sampler(self, n: int, seed: int) -> torch.utils.data.DistributedSampler:
        """A shuffling `DistributedSampler` over n items for this rank (call `set_epoch`)."""
        return torch.utils.data.DistributedSampler(
            _Sized(n),
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=True,
            seed=int(seed),
            drop_last=False,
        )

    def shard(self, positions: np.ndarray) -> np.ndarray:
        """This rank's share of `positions` without padding: positions[rank::world_size]."""
        return np.asarray(positions)[self.rank :: self.world_size]


def _outcome_value(message: Any, where: str) -> Any:
    if not isinstance(message, dict) or "state" not in message:
        raise DistributedError(f"Unexpected message from rank 0 during {where}: {message!r}")
    if message["state"] == "error":
        raise ForwardedError(message.get("message") or f"rank 0 failed during {where}")
    if message["state"] != "done":
        raise DistributedError(f"Unexpected message from rank 0 during {where}: {message!r}")
    return message.get("value")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} cannot be sent between processes")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise DistributedError(f"Unknown tensor type {name!r} received from rank 0.")
    return dtype


# ----------------------------------------------------------------------------- the process group


def start(
    device_name: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    environ: Mapping[str, str] | None = None,
) -> Distributed:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPU); single process if none.

    A torchrun launch of one process is a single-process run (no process group).
    """
    if timeout_s <= 0:
        raise DistributedError(f"The timeout must be positive (got {timeout_s} s).")
    env = launch_env(environ)
    if env is None or env.world_size == 1:
        return Distributed.single()
    device = process_device(device_name, env)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(seconds=float(timeout_s))
    options: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if "device_id" in inspect.signature(dist.init_process_group).parameters:
            options["device_id"] = device  # binds the GPU at once (PyTorch 2.3 and later)
    try:
        dist.init_process_group(
            backend, timeout=timeout, rank=env.rank, world_size=env.world_size, **options
        )
        control = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else None
    except (RuntimeError, ValueError) as error:
        raise DistributedError(
            f"Process {env.rank} of {env.world_size} could not join the others ({error}). Check "
            "that every process was started with the same torchrun settings and can reach "
            "MASTER_ADDR:MASTER_PORT (--rdzv-endpoint)."
        ) from error
    return Distributed(
        rank=env.rank,
        world_size=env.world_size,
        local_rank=env.local_rank,
        local_world_size=env.local_world_size,
        device=device,
        backend=backend,
        timeout_s=float(timeout_s),
        control_group=control,
    )


def stop(context: Distributed) -> None:
    """Leave the process group (if any)."""
    if context.is_distributed and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


@contextlib.contextmanager
def process_group(
    device_name: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    environ: Mapping[str, str] | None = None,
) -> Iterator[Distributed]:
    """`start` ... `stop` as a context manager."""
    context = start(device_name, timeout_s, environ)
    try:
        yield context
    finally:
        stop(context)


# ----------------------------------------------------------------------------- batches


def local_batch_size(global_batch: int, world_size: int) -> int:
    """Each rank's batch for a GLOBAL batch size; clear errors when it does not divide."""
    if world_size <= 1:
        return int(global_batch)
    if global_batch % world_size:
        lower = global_batch - global_batch % world_size
        options = [b for b in (lower, lower + world_size) if b >= 2 * world_size]
        raise TrainingError(
            f"The batch size {global_batch} cannot be shared by {world_size} processes: it is the "
            "global batch size and must be a multiple of the number of processes. Use "
            + " or ".join(f"--batch-size {b}" for b in options)
            + "."
        )
    local = global_batch // world_size
    if local < 2:
        raise TrainingError(
            f"The batch size {global_batch} gives each of {world_size} processes fewer than 2 "
            f"cells (BatchNorm needs 2); use --batch-size {2 * world_size} or more."
        )
    return local


# ----------------------------------------------------------------------------- launching


def torchrun_command(nproc: int, train_argv: Sequence[str]) -> list[str]:
    """The command that runs `napari-allbag train <train_argv>` on nproc local processes."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={int(nproc)}",
        "-m",
        "napari_allbag",
        "train",
        *train_argv,
    ]


# ----------------------------------------------------------------------------- test hook


def fault_point(
    stage: str, epoch: int, rank: int, environ: Mapping[str, str] | None = None
) -> None:
    """The `NAPARI_ALLBAG_FAULT` test hook, called by every rank after each epoch's checkpoint.

    "exit:RANK:STAGE:EPOCH": that rank exits at once (a crash); "hang:RANK:STAGE:EPOCH": that
    rank stops answering (sleeps for an hour); "interrupt:STAGE:EPOCH": every rank raises
    KeyboardInterrupt, as Ctrl-C does.
    """
    environ = os.environ if environ is None else environ
    spec = environ.get(FAULT_ENV, "").strip()
    if not spec:
        return
    parts = spec.split(":")
    try:
        if parts[0] in ("exit", "hang") and len(parts) == 4:
            if int(parts[1]) == rank and parts[2] == stage and int(parts[3]) == epoch:
                print(
                    f"[{FAULT_ENV}] process {rank}: {parts[0]} after {stage} epoch {epoch}",
                    file=sys.stderr,
                    flush=True,
                )
                if parts[0] == "exit":
                    os._exit(FAULT_EXIT_STATUS)
                time.sleep(3600)
            return
        if parts[0] == "interrupt" and len(parts) == 3:
            if parts[1] == stage and int(parts[2]) == epoch:
                raise KeyboardInterrupt
            return
    except ValueError:
        pass
    raise TrainingError(
        f"{FAULT_ENV}={spec!r} is not understood: use exit:RANK:STAGE:EPOCH, "
        "hang:RANK:STAGE:EPOCH or interrupt:STAGE:EPOCH (a test hook)."
    )
