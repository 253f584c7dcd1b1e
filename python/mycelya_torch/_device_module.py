# SPDX-License-Identifier: AGPL-3.0-or-later
"""torch.mycelya: the device module PyTorch looks up for the "mycelya" backend."""

import types

import torch

from . import _C

_current_device = 0


def is_available():
    return True


def device_count():
    """Number of mycelya devices handed out so far (one per machine device used)."""
    return _C.registered_device_count()


def current_device():
    return _current_device


def _index_of(device):
    """The index ``device`` names (an int, "mycelya:1", a torch.device); None for a bare "mycelya"."""
    return device if isinstance(device, int) else torch.device(device).index


def set_device(device):
    global _current_device
    _current_device = _index_of(device)


class device:
    """Context manager that makes ``device`` the current mycelya device (as
    torch.cuda.device does); torch.load(map_location=...) enters it."""

    def __init__(self, device):
        self._index = _index_of(device)
        self._previous = None

    def __enter__(self):
        self._previous = current_device()
        if self._index is not None:
            set_device(self._index)
        return self

    def __exit__(self, *exc):
        set_device(self._previous)
        return False


def manual_seed(seed):
    """Seeds the random generators of every running machine (queued, no round trip)."""
    _C.seed_all(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)


def manual_seed_all(seed):
    manual_seed(seed)


def _device_index(device):
    index = _index_of(device)
    return current_device() if index is None else index


def get_rng_state(device="mycelya"):
    """The state of the random generator behind ``device`` on its machine, as a
    CPU uint8 tensor (a sync point), as torch.cuda.get_rng_state returns."""
    state = _C.get_rng_state(_device_index(device))
    return torch.frombuffer(bytearray(state), dtype=torch.uint8)


def set_rng_state(new_state, device="mycelya"):
    """Restores a state get_rng_state returned (queued, like an op)."""
    if not isinstance(new_state, torch.Tensor) or new_state.dtype != torch.uint8:
        raise ValueError("set_rng_state expects the uint8 tensor get_rng_state returned")
    _C.set_rng_state(_device_index(device), new_state.cpu().contiguous().numpy().tobytes())


def synchronize(device=None):
    """Waits for every queued op of the machine behind ``device`` (default: all)."""
    from ._machine import get_all_machines, machine_for_device

    if device is not None:
        machine_for_device(device).synchronize()
        return
    for machine in get_all_machines():
        if machine.running:
            machine.synchronize()


def get_amp_supported_dtype():
    """Dtypes torch.autocast may use on mycelya (checkpointing asks)."""
    return [torch.float16, torch.bfloat16]


def _is_in_bad_fork():
    return False


def register_device_module():
    module = types.ModuleType("torch.mycelya")
    module.device = device
    # Read by torch.utils.checkpoint: only an initialized backend's RNG state is preserved.
    module._initialized = True
    for fn in (
        is_available,
        device_count,
        current_device,
        set_device,
        manual_seed,
        manual_seed_all,
        get_rng_state,
        set_rng_state,
        get_amp_supported_dtype,
        synchronize,
        _is_in_bad_fork,
    ):
        setattr(module, fn.__name__, fn)
    torch._register_device_module("mycelya", module)
