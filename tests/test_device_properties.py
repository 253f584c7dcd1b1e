# SPDX-License-Identifier: AGPL-3.0-or-later
"""torch.mycelya.get_device_properties and friends: what the machine's Hello
said of each device, read with no round trip.

A cpu device describes the machine's processor honestly (its model name, the
memory a session may hold there, capability 0.0); mock's emulated GPUs take
the values of their gpu_type, as a real GPU's driver reports them.
"""

import pytest
import torch

import mycelya_torch
from conftest import PROVIDER


def processor_name():
    """The model name the machine's /proc/cpuinfo gives (every provider here runs on this host)."""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "cpu"


def test_a_cpu_device_describes_the_processor(machine):
    cpu = machine.device("cpu")
    properties = torch.mycelya.get_device_properties(cpu)
    assert properties.name == processor_name()
    assert properties.remote_device == "cpu"
    assert (properties.major, properties.minor) == (0, 0)
    assert torch.mycelya.get_device_capability(cpu) == (0, 0)
    assert torch.mycelya.get_device_name(cpu) == processor_name()
    # The memory a session may hold there: what mem_get_info calls total.
    assert properties.total_memory == torch.mycelya.mem_get_info(cpu)[1] > 0
    assert properties.multi_processor_count >= 1
    assert "remote_device='cpu'" in repr(properties)


def test_the_current_device_is_the_default(machine):
    with torch.mycelya.device(machine.device("cpu")):
        assert torch.mycelya.get_device_name() == processor_name()
        assert torch.mycelya.is_bf16_supported()
        assert torch.mycelya.is_bf16_supported(including_emulation=False)


def test_scripts_reach_them_through_the_device_module(machine):
    device = machine.device()
    module = torch.get_device_module(device)
    assert module.get_device_properties(device).name == torch.mycelya.get_device_name(device)
    assert module.get_device_capability(device) == torch.mycelya.get_device_capability(device)


def test_a_device_no_machine_runs_is_refused():
    with pytest.raises(ValueError):
        torch.mycelya.get_device_properties(mycelya_torch._C.max_devices() - 1)


# What each gpu_type's driver reports: name, capability, multiprocessors, MiB.
GPUS = {
    "T4": ("Tesla T4", (7, 5), 40, 15360),
    "L4": ("NVIDIA L4", (8, 9), 58, 23034),
    "A10G": ("NVIDIA A10G", (8, 6), 80, 23028),
    "A100-40GB": ("NVIDIA A100-SXM4-40GB", (8, 0), 108, 40960),
    "A100-80GB": ("NVIDIA A100-SXM4-80GB", (8, 0), 108, 81920),
    "L40S": ("NVIDIA L40S", (8, 9), 142, 46068),
    "H100": ("NVIDIA H100 80GB HBM3", (9, 0), 132, 81559),
    "H200": ("NVIDIA H200", (9, 0), 132, 143771),
    "B200": ("NVIDIA B200", (10, 0), 148, 183359),
}


def test_every_gpu_type_is_described():
    assert sorted(GPUS) == sorted(mycelya_torch._C.supported_gpu_types())


@pytest.mark.skipif(PROVIDER != "mock", reason="mock's emulated GPUs")
@pytest.mark.parametrize("gpu_type", sorted(GPUS))
def test_an_emulated_gpu_reports_its_type(gpu_type):
    name, capability, multiprocessors, mib = GPUS[gpu_type]
    with mycelya_torch.RemoteMachine("mock", gpu_type, gpu_count=2) as machine:
        for index in range(2):
            properties = torch.mycelya.get_device_properties(machine.device("cuda", index))
            assert properties.name == name
            assert (properties.major, properties.minor) == capability
            assert properties.multi_processor_count == multiprocessors
            assert properties.total_memory == mib << 20
            assert properties.remote_device == f"cuda:{index}"
        with torch.mycelya.device(machine.device("cuda")):
            # Native bf16 from Ampere (8.0) on, as torch.cuda says.
            assert torch.mycelya.is_bf16_supported(including_emulation=False) == (capability >= (8, 0))
            assert torch.mycelya.is_bf16_supported()
        # The machine's cpu device is still the processor.
        assert torch.mycelya.get_device_name(machine.device("cpu")) == processor_name()
