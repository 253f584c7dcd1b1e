# SPDX-License-Identifier: AGPL-3.0-or-later
"""RecordOps: the names of the ATen ops a block dispatches, for tests that check which kernels a call took."""

from torch.utils._python_dispatch import TorchDispatchMode


class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.__name__)
        return func(*args, **(kwargs or {}))
