# SPDX-License-Identifier: AGPL-3.0-or-later
"""The Python API: RemoteMachine, devices, logging controls, torch.mycelya."""

import logging

import pytest
import torch

import mycelya_torch
from conftest import PROVIDER


def test_unknown_provider_lists_the_providers_found():
    with pytest.raises(ValueError, match=r"Unknown provider 'nope'.*mock"):
        mycelya_torch.RemoteMachine("nope")


def test_unknown_gpu_type_lists_the_valid_ones_before_starting():
    before = len(mycelya_torch.get_all_machines())
    with pytest.raises(ValueError) as info:
        mycelya_torch.RemoteMachine("mock", "H1000")
    for gpu in ("T4", "L4", "A10G", "A100-40GB", "A100-80GB", "L40S", "H100", "H200", "B200"):
        assert gpu in str(info.value)
    assert len(mycelya_torch.get_all_machines()) == before


@pytest.mark.parametrize(
    "gpu_type, kwargs, names",
    [
        ("T4", {"gpu_count": 0}, "gpu_count"),
        ("T4", {"gpu_count": "2"}, "gpu_count"),
        (None, {"gpu_count": 4}, "gpu_count=4 needs a gpu_type"),
        ("T4", {"idle_timeout": -1}, "idle_timeout"),
        ("T4", {"idle_timeout": float("nan")}, "idle_timeout"),
        ("T4", {"idle_timeout": float("inf")}, "idle_timeout"),
        ("T4", {"idle_timeout": True}, "idle_timeout"),
        ("T4", {"packages": [3]}, "packages"),
        ("T4", {"packages": "torch"}, "packages must be a list"),
        ("T4", {"packages": [""]}, "packages"),
        ("T4", {"packages": {"torch": 1}}, "packages"),
        (3, {}, "gpu_type"),
    ],
)
def test_bad_arguments_are_value_errors_that_name_them(gpu_type, kwargs, names):
    before = len(mycelya_torch.get_all_machines())
    with pytest.raises(ValueError, match=names):
        mycelya_torch.RemoteMachine("mock", gpu_type, **kwargs)
    assert len(mycelya_torch.get_all_machines()) == before


def test_packages_may_be_a_tuple():
    machine = mycelya_torch.RemoteMachine("mock", packages=("numpy",), start=False)
    assert machine.packages == ["numpy"]


def test_gpu_types_constant_matches_the_seed_list():
    assert mycelya_torch.GPU_TYPES == (
        "T4",
        "L4",
        "A10G",
        "A100-40GB",
        "A100-80GB",
        "L40S",
        "H100",
        "H200",
        "B200",
    )


def test_default_device_is_cuda_with_gpus_else_cpu():
    with mycelya_torch.RemoteMachine("mock", "H100", gpu_count=2) as gpu_machine:
        assert gpu_machine.devices() == ["cuda:0", "cuda:1", "cpu"]
        assert gpu_machine.device() == gpu_machine.device("cuda", 0)
        assert gpu_machine.device("cuda", 1) != gpu_machine.device("cuda", 0)
        assert gpu_machine.device("cpu").type == "mycelya"
    with mycelya_torch.RemoteMachine("mock") as cpu_machine:
        assert cpu_machine.devices() == ["cpu"]
        assert cpu_machine.device() == cpu_machine.device("cpu")
        with pytest.raises(ValueError, match="offers: cpu"):
            cpu_machine.device("cuda")
        with pytest.raises(ValueError):
            cpu_machine.device("tpu")


def test_device_is_stable_and_torch_sees_the_backend(machine, device):
    assert device.type == "mycelya"
    assert machine.device() == device
    x = torch.ones(2, device=device)
    assert x.device == device
    assert x.is_mycelya
    assert torch.mycelya.is_available()
    assert torch.mycelya.device_count() >= 1


def test_machine_lifecycle_and_registry():
    m = mycelya_torch.RemoteMachine("mock", start=False)
    assert not m.running
    assert m not in mycelya_torch.get_all_machines()
    assert m.machine_id.startswith("mock-")
    with pytest.raises(RuntimeError, match="not running"):
        m.device()
    m.start()
    assert m in mycelya_torch.get_all_machines()
    x = torch.arange(4.0, device=m.device())
    assert x.sum().item() == 6.0
    m.stop()
    assert not m.running
    assert m not in mycelya_torch.get_all_machines()
    with pytest.raises(RuntimeError, match="not running"):
        (x + 1).cpu()


def test_context_manager_stops_the_machine():
    with mycelya_torch.RemoteMachine("mock") as m:
        assert m.running
    assert not m.running


def test_logging_controls():
    old = mycelya_torch.get_logging_level()
    try:
        mycelya_torch.enable_debug_logging()
        assert mycelya_torch.get_logging_level() == logging.DEBUG
        mycelya_torch.enable_info_logging()
        assert mycelya_torch.get_logging_level() == logging.INFO
        mycelya_torch.set_logging_level("warning")
        assert mycelya_torch.get_logging_level() == logging.WARNING
        mycelya_torch.disable_logging()
        assert mycelya_torch.get_logging_level() > logging.CRITICAL
        with pytest.raises(ValueError):
            mycelya_torch.set_logging_level("loud")
    finally:
        mycelya_torch.set_logging_level(old)


def test_synchronize_waits_and_counts_batches(machine, device):
    sent = machine.batches_sent
    x = torch.ones(8, device=device)
    for _ in range(5):
        x = x * 2
    machine.synchronize()
    torch.mycelya.synchronize()
    assert machine.batches_sent > sent
    assert x.cpu().tolist() == [32.0] * 8


def test_available_providers_includes_the_default():
    assert PROVIDER in mycelya_torch.available_providers()
