# SPDX-License-Identifier: AGPL-3.0-or-later
"""mycelya-torch: run PyTorch on a remote GPU as if it were a local device.

machine = mycelya_torch.RemoteMachine("mock")
x = torch.randn(1000, 1000, device=machine.device())
print((x @ x).sum().item())
"""

import os
import sys
import sysconfig

import torch

from . import (
    _C,  # registers the "mycelya" PrivateUse1 backend (C++)
    _progress,
    device_module,
)
from ._huggingface import load_huggingface_model
from ._logging import (
    disable_logging,
    enable_debug_logging,
    enable_info_logging,
    get_logging_level,
    set_logging_level,
)
from ._machine import RemoteMachine, get_all_machines
from ._remote import remote
from ._version import __version__

# Providers are looked up beside the package too (after $MYCELYA_PROVIDER_PATH).
_C.add_plugin_dir(os.path.dirname(os.path.abspath(__file__)))
# A provider that drives a Python SDK (modal) runs it with this interpreter,
# so it sees this environment's packages.
os.environ.setdefault("MYCELYA_PYTHON", sys.executable)


def _libpython():
    """This interpreter's shared library, which a mycelya-server started from
    here embeds to run remote functions; empty when it has none."""
    name = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY") or ""
    path = os.path.join(sysconfig.get_config_var("LIBDIR") or "", name)
    return path if ".so" in name and os.path.exists(path) else ""


os.environ.setdefault("MYCELYA_LIBPYTHON", _libpython())
_progress.install()

torch.utils.generate_methods_for_privateuse1_backend(
    for_tensor=True, for_module=True, for_packed_sequence=True, for_storage=True
)
# torch.mycelya, as torch.cuda is for CUDA.
torch._register_device_module("mycelya", device_module)

GPU_TYPES = tuple(_C.supported_gpu_types())

__all__ = [
    "GPU_TYPES",
    "__version__",
    "RemoteMachine",
    "available_providers",
    "disable_logging",
    "enable_debug_logging",
    "enable_info_logging",
    "get_all_machines",
    "get_logging_level",
    "load_huggingface_model",
    "remote",
    "set_logging_level",
]


def available_providers():
    """Names of the provider plugins this installation can load."""
    return list(_C.available_providers())
