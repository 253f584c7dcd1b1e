# SPDX-License-Identifier: AGPL-3.0-or-later
"""The Python API: RemoteMachine, devices, logging controls, torch.mycelya."""

import logging
import time

import pytest
import torch

import mycelya_torch
from conftest import PROVIDER
from mycelya_torch import remote


def _expected_devices(gpu_type, gpu_count):
    """What a machine of the provider under test offers: mock emulates the
    GPUs asked for; local-cuda serves this host's, whatever was asked."""
    if PROVIDER == "mock":
        gpus = gpu_count if gpu_type else 0
    else:
        gpus = torch.cuda.device_count()
    return [f"cuda:{i}" for i in range(gpus)] + ["cpu"]


def test_unknown_provider_lists_the_providers_found():
    with pytest.raises(ValueError, match=r"Unknown provider 'nope'.*mock"):
        mycelya_torch.RemoteMachine("nope")


def test_unknown_gpu_type_lists_the_valid_ones_before_starting():
    before = len(mycelya_torch.get_all_machines())
    with pytest.raises(ValueError) as info:
        mycelya_torch.RemoteMachine(PROVIDER, "H1000")
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
        mycelya_torch.RemoteMachine(PROVIDER, gpu_type, **kwargs)
    assert len(mycelya_torch.get_all_machines()) == before


def test_packages_may_be_a_tuple():
    machine = mycelya_torch.RemoteMachine(PROVIDER, packages=("numpy",), start=False)
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


@pytest.mark.parametrize("gpu_type, gpu_count", [("H100", 2), (None, 1)])
def test_default_device_is_cuda_with_gpus_else_cpu(gpu_type, gpu_count):
    expected = _expected_devices(gpu_type, gpu_count)
    with mycelya_torch.RemoteMachine(PROVIDER, gpu_type, gpu_count=gpu_count) as machine:
        assert machine.devices() == expected
        assert machine.device("cpu").type == "mycelya"
        if "cuda:0" in expected:
            assert machine.device() == machine.device("cuda", 0)
        else:
            assert machine.device() == machine.device("cpu")
            with pytest.raises(ValueError, match="offers: cpu"):
                machine.device("cuda")
        if "cuda:1" in expected:
            assert machine.device("cuda", 1) != machine.device("cuda", 0)
        with pytest.raises(ValueError, match="tpu"):
            machine.device("tpu")


def test_device_is_stable_and_torch_sees_the_backend(machine, device):
    assert device.type == "mycelya"
    assert machine.device() == device
    x = torch.ones(2, device=device)
    assert x.device == device
    assert x.is_mycelya
    assert torch.mycelya.is_available()
    # The only machine running (this module's others stop as they end): its
    # devices take the indices from 0, and the count is one past the highest.
    assert mycelya_torch.get_all_machines() == [machine]
    held = len(machine.devices())
    assert device.index == 0
    assert torch.mycelya.device_count() == held
    with mycelya_torch.RemoteMachine(PROVIDER) as other:
        assert other.device().index == held  # the lowest free index
        assert torch.mycelya.device_count() == held + len(other.devices())
    assert torch.mycelya.device_count() == held


def test_machine_lifecycle_and_registry():
    m = mycelya_torch.RemoteMachine(PROVIDER, start=False)
    assert not m.running
    assert m not in mycelya_torch.get_all_machines()
    assert m.machine_id.startswith(f"{PROVIDER}-")
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
    with mycelya_torch.RemoteMachine(PROVIDER) as m:
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


@remote(run_async=True)
def _mark_after_a_while(x, path):
    # Slow next to a synchronize that returned at once (microseconds).
    time.sleep(0.5)
    with open(path, "w") as marker:
        marker.write("ran")
    return x.sum()


@pytest.mark.parametrize("synchronize", ["machine", "torch.mycelya", "torch.accelerator", "stream"])
def test_synchronize_waits_for_queued_work_and_counts_batches(machine, device, tmp_path, synchronize):
    sent = machine.batches_sent
    x = torch.ones(8, device=device)
    for _ in range(5):
        x = x * 2
    # A call queued behind the ops; it writes its marker on the machine (in
    # the server's process on local-cuda), which this process sees on disk
    # without another sync point.
    marker = tmp_path / "marker"
    future = _mark_after_a_while(x, str(marker))
    if synchronize == "machine":
        machine.synchronize()
    elif synchronize == "torch.accelerator":
        with torch.mycelya.device(device):
            torch.accelerator.synchronize()
    elif synchronize == "stream":
        torch.accelerator.current_stream(device).synchronize()
    else:
        torch.mycelya.synchronize(device)
    assert marker.read_text() == "ran"
    assert machine.batches_sent > sent
    assert future.result().item() == 32.0 * 8
    assert x.cpu().tolist() == [32.0] * 8


def test_available_providers_includes_the_default():
    assert PROVIDER in mycelya_torch.available_providers()
