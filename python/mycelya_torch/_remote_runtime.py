# SPDX-License-Identifier: AGPL-3.0-or-later
"""The bytes of a remote call, on both sides (see core/remote_call.h).

A call travels as cloudpickle of (function, args, kwargs) in which every
mycelya tensor is a persistent reference to a slot of the call's tensor list,
so no tensor byte is pickled: the server hands its own tensors over those
storages to ``run_call``. What comes back is pickled the same way, every
tensor the function returned (or changed) a reference to the result's tensor
list, which the client turns into mycelya tensors.

Both payloads are ``pickle.dumps((meta, body))``: ``meta`` says, per tensor
slot, what the pickled body cannot (Parameter or not, requires_grad, .grad),
since slots are only known once the body is pickled.
"""

import io
import pickle
import sys
import sysconfig
import traceback

import cloudpickle
import torch

from . import _machine_packages

_PROTOCOL = pickle.HIGHEST_PROTOCOL

# What a tensor slot says besides its storage: (kind, requires_grad, grad slot or -1).
_PARAMETER = "parameter"
_TENSOR = "tensor"


class RemoteTraceback(Exception):
    """The traceback of an exception raised on the machine, as its __cause__."""

    def __str__(self):
        return "\n\nTraceback on the machine:\n" + self.args[0]


class _SlotPickler(cloudpickle.Pickler):
    """Pickles an object graph with the tensors `is_slot(t)` picks as slots,
    and whatever `device_id(obj)` names (else None) as that reference."""

    def __init__(self, is_slot, device_id):
        self._buffer = io.BytesIO()
        super().__init__(self._buffer, protocol=_PROTOCOL)
        self._is_slot = is_slot
        self._device_id = device_id
        self.tensors = []  # by slot
        self.meta = []  # by slot
        self._slots = {}  # id(tensor) -> slot; tensors keeps the objects alive

    def slot(self, tensor):
        found = self._slots.get(id(tensor))
        if found is not None:
            return found
        slot = len(self.tensors)
        self._slots[id(tensor)] = slot
        self.tensors.append(tensor)
        self.meta.append(None)
        kind = _PARAMETER if isinstance(tensor, torch.nn.Parameter) else _TENSOR
        grad = tensor.grad if tensor.is_leaf else None
        grad_slot = self.slot(grad) if grad is not None else -1
        self.meta[slot] = (kind, tensor.requires_grad, grad_slot)
        return slot

    def persistent_id(self, obj):
        if isinstance(obj, torch.Tensor) and self._is_slot(obj):
            return ("tensor", self.slot(obj))
        return self._device_id(obj)

    def dumps(self, body):
        """(payload bytes, slot tensors). Drops the pickler's references after,
        even when pickling fails: the C pickler keeps a bound persistent_id, a
        cycle that would hold every tensor (and the machine's memory under
        it) until a garbage collection."""
        try:
            self.dump(body)
            return pickle.dumps((self.meta, self._buffer.getvalue()), protocol=_PROTOCOL), self.tensors
        finally:
            self.tensors = self.meta = self._slots = self._buffer = None


class _SlotUnpickler(pickle.Unpickler):
    def __init__(self, file, objects, device):
        super().__init__(file)
        self._objects = objects
        self._device = device

    def persistent_load(self, pid):
        if pid[0] == "tensor":
            return self._objects[pid[1]]
        if pid[0] == "device":
            return self._device(pid[1])
        raise pickle.UnpicklingError(f"unknown reference {pid!r}")


def _tensor_objects(tensors, meta):
    """The Python objects of the slots: Parameters where they were, with
    requires_grad and .grad as the sender's."""
    objects = list(tensors)
    for slot, (kind, requires_grad, _) in enumerate(meta):
        tensor = objects[slot]
        if kind == _PARAMETER:
            objects[slot] = torch.nn.Parameter(tensor, requires_grad=requires_grad)
        elif requires_grad and (tensor.is_floating_point() or tensor.is_complex()):
            objects[slot] = tensor.requires_grad_(True)
    for slot, (_, _, grad_slot) in enumerate(meta):
        if grad_slot >= 0:
            objects[slot].grad = objects[grad_slot]
    return objects


def _loads(data, tensors, device):
    meta, body = pickle.loads(data)
    if len(meta) != len(tensors):
        raise pickle.UnpicklingError(f"{len(tensors)} tensors came for {len(meta)} slots")
    objects = _tensor_objects(tensors, meta)
    unpickler = _SlotUnpickler(io.BytesIO(body), objects, device)
    try:
        return objects, unpickler.load()
    finally:
        unpickler._objects = None  # as in _SlotPickler.dumps: no cycle keeps the tensors


# ---------------------------------------------------------------------------
# The client's side.


def _pickle_by_value(module_name):
    """Functions of the caller's own modules (a script, a test file) cannot be
    imported on the machine: pickle them, and what they use, by value.
    Installed packages and the standard library are imported there."""
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if module is None or path is None or module_name == "__main__":
        return
    installed = [sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib")]
    installed += _machine_packages.folders()  # on mock, the machine's packages are installed ones
    if any(path.startswith(root) for root in installed) or module_name.startswith("mycelya_torch"):
        return
    cloudpickle.register_pickle_by_value(module)


def pack_call(function, args, kwargs, remote_device_name):
    """(call bytes, slot tensors, mycelya device indices the call names)."""
    device_indices = set()

    def is_slot(tensor):
        if tensor.device.type != "mycelya":
            return False
        device_indices.add(tensor.device.index)
        return True

    def device_id(obj):
        if isinstance(obj, torch.device) and obj.type == "mycelya":
            index = obj.index if obj.index is not None else torch.mycelya.current_device()
            device_indices.add(index)
            return ("device", remote_device_name(index))
        if isinstance(obj, torch.Generator) and obj.device.type == "mycelya":
            raise ValueError("a mycelya torch.Generator cannot be passed to a remote function")
        return None

    _pickle_by_value(getattr(function, "__module__", None))
    try:
        data, tensors = _SlotPickler(is_slot, device_id).dumps((function, args, kwargs))
    except ValueError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever pickling raised, said plainly
        name = getattr(function, "__qualname__", repr(function))
        raise ValueError(f"cannot send the arguments of {name} to the machine: {error}") from error
    return data, tensors, device_indices


def unpack_result(data, raised, tensors, local_device, name):
    """The function's return value, with the call's argument updates (a list
    of (tensor, requires_grad, grad or None) per argument slot); raises what
    the function raised."""
    if raised:
        error, remote_traceback = pickle.loads(data)
        if error is not None:
            raise error from RemoteTraceback(remote_traceback)
        raise RuntimeError(f"{name} raised on the machine:\n{remote_traceback}")
    objects, (value, updates) = _loads(data, tensors, local_device)
    return value, [(objects[t], rg, objects[g] if g >= 0 else None) for t, rg, g in updates]


# ---------------------------------------------------------------------------
# The machine's side: run by libmycelya_python_calls.so (server/python_calls.cpp).


def _machine_device_id(obj):
    # A device of the machine comes back as the caller's mycelya device for it.
    if isinstance(obj, torch.device) and obj.type in ("cuda", "cpu"):
        index = obj.index if obj.index is not None else (0 if obj.type == "cuda" else None)
        return ("device", obj.type if index is None else f"{obj.type}:{index}")
    return None


def run_call(data, tensors):
    """Runs one call on the executor's `tensors`; returns (bytes, raised, result tensors)."""
    try:
        objects, (function, args, kwargs) = _loads(data, tensors, torch.device)
        with torch.enable_grad():
            value = function(*args, **kwargs)

        # Every slot's object goes back too: it tells the client of data,
        # requires_grad and .grad the function changed in place.
        pickler = _SlotPickler(is_slot=lambda tensor: True, device_id=_machine_device_id)
        updates = []
        for obj in objects:
            grad = obj.grad if obj.is_leaf else None
            updates.append(
                (pickler.slot(obj), obj.requires_grad, pickler.slot(grad) if grad is not None else -1)
            )
        data, tensors = pickler.dumps((value, updates))
        return data, False, tensors
    except BaseException as error:  # noqa: BLE001 - every failure goes to the caller
        remote_traceback = traceback.format_exc()
        try:
            data = cloudpickle.dumps((error, remote_traceback), protocol=_PROTOCOL)
            pickle.loads(data)
        except Exception:  # noqa: BLE001 - an exception that does not pickle goes as text
            data = pickle.dumps((None, remote_traceback), protocol=_PROTOCOL)
        return data, True, []


def pip_install(packages, device=None):
    """Installs `packages` into the machine's own package folder with pip
    (machine.pip_install; `device` only says which machine)."""
    return _machine_packages.install(packages)
