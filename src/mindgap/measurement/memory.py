"""Peak memory of a span of work: CUDA's allocator counters, or, on a CPU, which has none, a dispatch tracker."""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

MIB = 2**20


class AllocationTracker(TorchDispatchMode):
    """Live and peak bytes of the tensor storages that operators allocate while the mode is active.

    Every operator call, backward ones included (the autograd engine runs CPU work on the calling
    thread, inside the mode), passes through ``__torch_dispatch__``. An output whose storage is not
    one of the inputs' storages was allocated by that operator; its bytes stay live until the storage
    is freed, which ``weakref.finalize`` on the storage reports (PyTorch keeps a storage's Python
    object alive exactly as long as its data). Storages that existed before the mode (parameters,
    the batch) are never counted, so the peak is comparable to CUDA's ``max_memory_allocated`` minus
    the allocation at the start. Not seen: scratch memory a kernel allocates and frees internally,
    allocator rounding and fragmentation, and Python objects.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._sizes: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        outputs = func(*args, **kwargs)
        input_storages = {_storage_key(tensor) for tensor in tree_leaves((args, kwargs)) if _has_storage(tensor)}
        for tensor in tree_leaves(outputs):
            if _has_storage(tensor):
                self._record(tensor.untyped_storage(), input_storages)
        return outputs

    def _record(self, storage: torch.UntypedStorage, input_storages: set[int]) -> None:
        key, size = storage._cdata, storage.nbytes()
        if key in self._sizes:  # an in-place or out= operator may have resized a storage allocated here
            self.live_bytes += size - self._sizes[key]
            self._sizes[key] = size
        elif key not in input_storages and size > 0:  # else a view or the result of an in-place operator
            self._sizes[key] = size
            self.live_bytes += size
            weakref.finalize(storage, self._release, key)
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)

    def _release(self, key: int) -> None:
        self.live_bytes -= self._sizes.pop(key, 0)


def _has_storage(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.layout == torch.strided and value.device.type != "meta"


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


class PeakMemory:
    """Peak bytes allocated between ``start()`` and ``stop()`` beyond those allocated at ``start()``.

    CUDA: the caching allocator's counters. CPU: an :class:`AllocationTracker`. Usable as a context
    manager, or started and stopped from two callbacks.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0
        self._tracker: AllocationTracker | None = None
        self._baseline = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
        else:
            self._tracker = AllocationTracker()
            self._tracker.__enter__()

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._baseline
        else:
            if self._tracker is None:
                raise RuntimeError("PeakMemory.stop() without start()")
            self._tracker.__exit__(None, None, None)
            self.peak_bytes = self._tracker.peak_bytes
        return self.peak_bytes

    def __enter__(self) -> PeakMemory:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def check_allocation_tracker() -> str:
    """Validate the tracker on allocations of known size; returns the line a benchmark prints about it."""
    known_bytes = 3 * MIB
    weight = torch.nn.Parameter(torch.randn(256, 128))
    inputs = torch.randn(512, 256, requires_grad=True)
    with AllocationTracker() as tracker:
        block = torch.empty(known_bytes, dtype=torch.uint8)
        block_view = block.view(3, -1)
        weight_view = weight.t()  # a view of a storage from before the mode: never counted
        after_allocation = tracker.live_bytes
        del block, block_view, weight_view
        after_free = tracker.live_bytes
        output = (inputs @ weight).relu().sum()
        output.backward()
        del output
        after_backward = tracker.live_bytes
    gradient_bytes = inputs.grad.nbytes + weight.grad.nbytes
    problems = []
    if tracker.peak_bytes < known_bytes or after_allocation != known_bytes or after_free != 0:
        problems.append(f"a {known_bytes} B tensor read as {after_allocation} B live, {after_free} B after its free")
    if after_backward != gradient_bytes:
        problems.append(f"backward left {after_backward} B live, the gradients hold {gradient_bytes} B")
    if problems:
        raise RuntimeError("the allocation tracker is wrong: " + "; ".join(problems))
    return (
        f"allocation tracker: a {known_bytes / MIB:.0f} MiB tensor reads {after_allocation / MIB:.3f} MiB and 0 after"
        f" its free, views add nothing; backward's gradients ({gradient_bytes / MIB:.3f} MiB) are seen"
    )
