# SPDX-License-Identifier: AGPL-3.0-or-later
"""@mycelya_torch.remote: Python functions that run on the machine that holds
their tensors (see _remote_runtime.py for what travels)."""

import concurrent.futures
import functools
import threading

import torch

from . import _C, _registry, _remote_runtime
from ._packages import check_packages

# Takes results of run_async calls, so the caller never waits for them.
_takers = None
_takers_lock = threading.Lock()


def _taker_pool():
    global _takers
    with _takers_lock:
        if _takers is None:
            _takers = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix="mycelya-remote"
            )
        return _takers


def _machine_of_index(index):
    return _registry.machine_by_id(_C.machine_of(index).machine_id)


class _PendingCall:
    """A call queued on a machine; result() waits for its outcome."""

    def __init__(self, queued, device_index, tensors, name):
        self._queued = queued
        self._tensors = tensors
        self._name = name
        machine = _C.machine_of(device_index)

        def local_device(remote_name):
            device_type, _, index = remote_name.partition(":")
            return torch.device("mycelya", machine.device_index(device_type, int(index or 0)))

        self._local_device = local_device

    def result(self):
        data, raised, tensors = self._queued.take()
        value, updates = _remote_runtime.unpack_result(data, raised, tensors, self._local_device, self._name)
        self._apply_updates(updates)
        return value

    def _apply_updates(self, updates):
        """What the function changed in its arguments besides their bytes."""
        for local, (new, requires_grad, grad) in zip(self._tensors, updates, strict=True):
            if _geometry(local) != _geometry(new):
                with torch.no_grad():
                    local.set_(new)
            if not local.is_leaf:
                continue
            if local.requires_grad != requires_grad:
                local.requires_grad_(requires_grad)
            if _geometry(local.grad) != _geometry(grad):
                local.grad = grad


def _geometry(tensor):
    if tensor is None:
        return None
    return (
        _C.storage_id(tensor),
        tensor.dtype,
        tuple(tensor.shape),
        tensor.stride(),
        tensor.storage_offset(),
    )


def _pack(function, args, kwargs):
    """(call bytes, slot tensors, the device index of the machine it runs on, name)."""
    name = getattr(function, "__qualname__", repr(function))
    data, tensors, device_indices = _remote_runtime.pack_call(function, args, kwargs, _C.remote_device_name)
    machines = {_C.machine_of(index).machine_id: index for index in device_indices}
    if not machines:
        raise RuntimeError(
            f"No mycelya tensors or devices found in the arguments of {name}: a remote function "
            "runs on the machine of its tensors, so pass at least one mycelya tensor or device "
            "(machine.device())."
        )
    if len(machines) > 1:
        raise RuntimeError(
            f"The arguments of {name} are on different machines ({', '.join(sorted(machines))}); "
            "a remote function runs on one machine, so move them to one first."
        )
    (index,) = machines.values()
    return data, tensors, index, name


def call(function, args, kwargs, *, run_async=False, packages=()):
    """Runs `function(*args, **kwargs)` on the machine of its mycelya tensors
    (a Future of the result with run_async)."""
    data, tensors, index, name = _pack(function, args, kwargs)
    if packages:
        _machine_of_index(index)._pip_install_once(packages)
    pending = _PendingCall(_C.queue_call(data, tensors, index), index, tensors, name)
    if run_async:
        return _taker_pool().submit(pending.result)
    return pending.result()


class RemoteFunction:
    """A function that runs on the machine of its tensors (see ``remote``)."""

    def __init__(self, function, run_async, packages):
        functools.update_wrapper(self, function)
        self._function = function
        self._run_async = run_async
        self._packages = packages

    def __call__(self, *args, **kwargs):
        return call(self._function, args, kwargs, run_async=self._run_async, packages=self._packages)

    def __reduce__(self):
        # Sent to a machine (inside another remote function), it is the plain
        # function there: it already runs beside its tensors.
        return (_identity, (self._function,))


def _identity(value):
    return value


def remote(function=None, *, run_async=False, packages=None):
    """Runs the decorated function on the machine that holds its mycelya
    tensors, next to the data: tensors go by reference (no bytes copied),
    everything else by cloudpickle. Tensors it returns come back as mycelya
    tensors on that machine; changes it makes to its tensor arguments (data,
    ``requires_grad``, ``.grad``) show in the caller's.

    ``@remote(run_async=True)`` returns a ``concurrent.futures.Future``
    instead of waiting; ``@remote(packages=[...])`` pip-installs those
    packages on the machine before the first call there.

    A call sees every op queued before it, and ops queued after it see what
    it did. Raises RuntimeError when no argument is a mycelya tensor or
    device, or when they are on different machines; an exception the
    function raises reaches the caller with the machine's traceback as its
    cause, and the machine keeps working."""
    if function is None:
        return functools.partial(remote, run_async=run_async, packages=packages)
    if isinstance(function, RemoteFunction):
        function = function._function
    if not callable(function):
        raise ValueError(f"@remote decorates a function, got {function!r}.")
    if not isinstance(run_async, bool):
        raise ValueError(f"run_async must be True or False, got {run_async!r}.")
    return RemoteFunction(function, run_async, check_packages(packages))
