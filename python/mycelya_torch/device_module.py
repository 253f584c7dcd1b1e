# SPDX-License-Identifier: AGPL-3.0-or-later
"""torch.mycelya: the device module of the "mycelya" backend.

PyTorch looks this module up as ``torch.mycelya`` (as it does ``torch.cuda``
for CUDA). A device "mycelya:k" is one device of a running
:class:`mycelya_torch.RemoteMachine`; ``machine.device()`` gives it. Indices
are handed out when a machine starts and given back when it stops.

The current device lives in one place, the backend's C++ device guard, which
``current_device()``, ``set_device()``, ``device(...)``,
``torch.accelerator`` and PyTorch's own device guards all read and write.
Like CUDA's, it is per thread. Indices are the lowest free ones, so a
program's machines are usually ``mycelya:0`` and up; a stopped machine can
leave a gap below ``device_count()``.

Random numbers are drawn on the machines. Every entry point here reaches a
machine through the same generator objects: ``manual_seed_all`` (which
``torch.manual_seed`` calls) seeds every running device and devices of
machines started later; ``manual_seed``, ``get_rng_state`` and
``set_rng_state`` act on one device's default generator, which
``default_generator(device)`` returns, and ``torch.Generator(device=...)``
makes further generators on a device's machine.
"""

import contextlib

import torch

from . import _C

__all__ = [
    "Event",
    "Stream",
    "current_device",
    "current_stream",
    "default_generator",
    "default_stream",
    "device",
    "device_count",
    "empty_cache",
    "get_amp_supported_dtype",
    "get_device_capability",
    "get_device_name",
    "get_device_properties",
    "get_rng_state",
    "initial_seed",
    "is_available",
    "is_bf16_supported",
    "manual_seed",
    "manual_seed_all",
    "max_memory_allocated",
    "max_memory_reserved",
    "mem_get_info",
    "memory_allocated",
    "memory_reserved",
    "memory_stats",
    "reset_peak_memory_stats",
    "seed",
    "set_device",
    "set_rng_state",
    "set_stream",
    "stream",
    "synchronize",
]


def is_available():
    """Always True: mycelya devices exist whenever a machine runs."""
    return True


def device_count():
    """One more than the highest index a running machine's device holds, so
    ``range(device_count())`` covers every device in use (as it does for
    CUDA). A stopped machine may leave a gap in that range: an index no
    running machine holds. ``machine.device()`` is the way to a machine's
    device."""
    return _C.device_count()


def _is_gap(index):
    """Whether ``index`` lies below device_count() but no running machine holds it."""
    return 0 <= index < device_count() and index not in _C.running_device_indices()


def _index_of(device):
    """The index ``device`` names (an int, "mycelya:1", a torch.device); None for a bare "mycelya"."""
    if isinstance(device, bool):
        raise ValueError(f"expected a mycelya device or index, got {device!r}")
    if isinstance(device, int):
        return device
    device = torch.device(device)
    if device.type != "mycelya":
        raise ValueError(f"expected a mycelya device, got {device}")
    return device.index


def _device_index(device):
    """The index ``device`` names, the current device for None or a bare "mycelya"."""
    index = None if device is None else _index_of(device)
    return current_device() if index is None else index


def current_device():
    """The index of the current mycelya device of this thread."""
    return _C.current_device()


def set_device(device):
    """Makes ``device`` (an index, "mycelya:k" or a torch.device) current for
    this thread. Raises ValueError for one that names no running machine; a
    negative index changes nothing, as with torch.cuda."""
    index = _index_of(device)
    if index is not None and index >= 0:
        _C.set_device(index)


class device:
    """Context manager that makes ``device`` the current mycelya device, as
    ``torch.cuda.device`` does; ``torch.load(map_location=...)`` enters it.
    ``None`` or a bare "mycelya" leaves the current device as it is."""

    def __init__(self, device):
        self._index = None if device is None else _index_of(device)
        self._previous = None

    def __enter__(self):
        if self._index is not None and self._index >= 0:
            self._previous = _C.exchange_device(self._index)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            _C.restore_device(self._previous)
        return False


def default_generator(device=None):
    """The default random generator (a ``torch.Generator``) of ``device``,
    the current device by default: its state lives on the machine."""
    return _C.default_generator(_device_index(device))


def _seed_value(seed):
    return int(seed) & 0xFFFF_FFFF_FFFF_FFFF


def manual_seed(seed):
    """Seeds the current device's default generator (queued, no round trip).
    The machine's other devices keep their streams, as with torch.cuda. With
    no machine running, the machines started next begin from ``seed``, as
    CUDA seeds devices that initialize later."""
    if not _C.running_device_indices():
        _C.manual_seed_all(_seed_value(seed))
        return
    _C.manual_seed(_device_index(None), _seed_value(seed))


def manual_seed_all(seed):
    """Seeds every device of every running machine, and of machines started
    later, as ``torch.manual_seed`` does (queued, no round trip)."""
    _C.manual_seed_all(_seed_value(seed))


def seed():
    """Seeds the current device's default generator with a random number."""
    _C.seed(_device_index(None))


def initial_seed():
    """The seed of the current device's default generator."""
    return _C.initial_seed(_device_index(None))


def get_rng_state(device="mycelya"):
    """The state of ``device``'s default generator, read from its machine (a
    sync point), as the CPU uint8 tensor ``torch.cuda.get_rng_state`` returns.
    A gap below ``device_count()`` has an empty state, so that
    ``torch.random.fork_rng``, which saves every index, works."""
    index = _device_index(device)
    if _is_gap(index):
        return torch.empty(0, dtype=torch.uint8)
    return _C.get_rng_state(index)


def set_rng_state(new_state, device="mycelya"):
    """Restores a state ``get_rng_state`` returned (queued, like an op)."""
    if not isinstance(new_state, torch.Tensor) or new_state.dtype != torch.uint8:
        raise ValueError("set_rng_state expects the uint8 tensor get_rng_state returned")
    index = _device_index(device)
    if new_state.numel() == 0 and _is_gap(index):
        return
    _C.set_rng_state(index, new_state.cpu().contiguous())


def synchronize(device=None):
    """Waits for every queued op of the machine behind ``device`` (default:
    every running machine) and raises errors of earlier ops."""
    if device is not None:
        _C.machine_of(_device_index(device)).synchronize()
        return
    seen = set()
    for index in _C.running_device_indices():
        machine = _C.machine_of(index)
        if machine.machine_id not in seen:
            seen.add(machine.machine_id)
            machine.synchronize()


class Stream(torch.Stream):
    """A stream of a mycelya device (default: the current one), as
    ``torch.cuda.Stream``; ``with stream:`` makes it current. Every stream of
    a device runs its work in one order, the order ops were queued, so work is
    ordered at least as CUDA orders it and ``wait_stream``/``wait_event``
    need nothing more. Priorities are accepted and have no effect."""

    def __new__(cls, device=None, priority=0, **kwargs):
        if "stream_id" in kwargs:  # torch rebuilding a stream it knows
            return super().__new__(cls, **kwargs)
        index = _device_index(device)
        return super().__new__(cls, device=torch.device("mycelya", index), priority=priority)


class _EventType(type):
    # torch.Event's methods take only torch.Event itself as the other event,
    # so Event makes one; isinstance still answers for it.
    def __instancecheck__(cls, instance):
        return isinstance(instance, torch.Event) and instance.device.type == "mycelya"


class Event(metaclass=_EventType):
    """An event on a mycelya device (a ``torch.Event``), as
    ``torch.cuda.Event``: ``record()`` is queued like an op, and the event
    lives on the machine, which times it (CUDA events on a GPU, the
    executor's clock on a cpu device). ``query()`` and ``elapsed_time()`` are
    one round trip each; ``synchronize()`` waits for the machine."""

    def __new__(cls, enable_timing=False, blocking=False, interprocess=False):
        return torch.Event(
            device=torch.device("mycelya", current_device()),
            enable_timing=enable_timing,
            blocking=blocking,
            interprocess=interprocess,
        )


def current_stream(device=None):
    """This thread's current stream of ``device`` (default: the current device)."""
    return torch.accelerator.current_stream(_device_index(device))


def default_stream(device=None):
    """The default stream of ``device``: the one current until another is set."""
    current = current_stream(device)
    return torch.Stream(stream_id=0, device_index=current.device_index, device_type=current.device_type)


def set_stream(stream):
    """Makes ``stream`` current on its device for this thread."""
    if stream is not None:
        torch.accelerator.set_stream(stream)


def stream(stream):
    """Context manager that makes ``stream`` current, as ``torch.cuda.stream``; None changes nothing."""
    return contextlib.nullcontext() if stream is None else stream


def memory_stats(device=None):
    """The memory statistics of the machine's allocator for ``device``, as
    ``torch.cuda.memory_stats`` names them (``allocated_bytes.all.current``,
    ...): on a GPU the CUDA caching allocator's, on a cpu device the
    session's storages there (nothing cached: reserved is allocated). One
    round trip, after every op queued before it. On mock, emulated cuda
    devices and the cpu device share one count: all are the CPU."""
    return torch.accelerator.memory_stats(_device_index(device))


def memory_allocated(device=None):
    """Bytes of tensors on ``device``, as the machine's allocator counts them."""
    return torch.accelerator.memory_allocated(_device_index(device))


def max_memory_allocated(device=None):
    """The most bytes of tensors on ``device`` since the start or reset_peak_memory_stats()."""
    return torch.accelerator.max_memory_allocated(_device_index(device))


def memory_reserved(device=None):
    """Bytes the machine's allocator holds for ``device``, its cache included."""
    return torch.accelerator.memory_reserved(_device_index(device))


def max_memory_reserved(device=None):
    """The most bytes reserved for ``device`` since the start or reset_peak_memory_stats()."""
    return torch.accelerator.max_memory_reserved(_device_index(device))


def reset_peak_memory_stats(device=None):
    """Peaks of ``device`` start again from what it holds now."""
    torch.accelerator.reset_peak_memory_stats(_device_index(device))


def mem_get_info(device=None):
    """(free, total) bytes of ``device``: a GPU's own, or on a cpu device the
    session's memory limit and what of it is not in use."""
    return torch.accelerator.get_memory_info(_device_index(device))


def empty_cache():
    """Asks the current device's machine to give its GPUs' unused cached memory back."""
    torch.accelerator.empty_cache()


class _DeviceProperties:
    """What ``get_device_properties`` returns: the attributes scripts read of
    ``torch.cuda.get_device_properties``, as the machine reported them when
    it started. ``remote_device`` is the machine's own name for the device
    ("cuda:0", "cpu")."""

    __slots__ = (
        "name",
        "total_memory",
        "major",
        "minor",
        "multi_processor_count",
        "remote_device",
        "_bf16_supported",
    )

    def __init__(self, reported):
        self.name = reported["name"]
        self.total_memory = reported["total_memory"]
        self.major = reported["major"]
        self.minor = reported["minor"]
        self.multi_processor_count = reported["multi_processor_count"]
        self.remote_device = reported["remote_device"]
        self._bf16_supported = reported["bf16_supported"]

    def __repr__(self):
        return (
            f"_MycelyaDeviceProperties(name='{self.name}', major={self.major}, "
            f"minor={self.minor}, total_memory={self.total_memory // (1 << 20)}MB, "
            f"multi_processor_count={self.multi_processor_count}, "
            f"remote_device='{self.remote_device}')"
        )


def get_device_properties(device=None):
    """The properties of ``device`` (default: the current one), as
    ``torch.cuda.get_device_properties`` gives them: on a remote GPU the GPU's
    own name, memory, compute capability and multiprocessor count; on a cpu
    device the processor's name, the memory a session may hold there,
    capability 0.0 and the threads its ops run on. No round trip."""
    return _DeviceProperties(_C.device_properties(_device_index(device)))


def get_device_name(device=None):
    """The name of ``device``'s hardware, e.g. "NVIDIA H100 80GB HBM3"."""
    return get_device_properties(device).name


def get_device_capability(device=None):
    """``(major, minor)``: a remote GPU's CUDA compute capability, (0, 0) on a cpu device."""
    properties = get_device_properties(device)
    return properties.major, properties.minor


def is_bf16_supported(including_emulation=True):
    """Whether the current device computes in bfloat16, as
    ``torch.cuda.is_bf16_supported``: natively (a GPU of compute capability
    8.0 or more, or a cpu device), or with ``including_emulation`` wherever
    bfloat16 tensors can be made, which is every mycelya device."""
    if including_emulation:
        return True
    return get_device_properties()._bf16_supported


def get_amp_supported_dtype():
    """Dtypes torch.autocast may use on mycelya (checkpointing asks)."""
    return [torch.float16, torch.bfloat16]


def _is_in_bad_fork():
    return False


# Read by torch.utils.checkpoint: only an initialized backend's RNG state is preserved.
_initialized = True
