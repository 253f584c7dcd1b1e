# SPDX-License-Identifier: AGPL-3.0-or-later
"""Devices: indices handed out while a machine runs and reused after it stops,
tensors that never outlive their machine, and one current device."""

import pytest
import torch

import mycelya_torch
from conftest import PROVIDER

# Machines started and stopped in a row: every index is reused many times
# over. local-cuda starts a server process each time, so it does fewer.
CHURN = {"mock": 10_000}.get(PROVIDER, 40)


def test_stopped_machines_give_their_devices_back():
    count = torch.mycelya.device_count()
    seen = set()
    for _ in range(CHURN):
        machine = mycelya_torch.RemoteMachine(PROVIDER)
        seen.add(machine.device().index)
        machine.stop()
    assert torch.mycelya.device_count() == count
    # Each machine took the lowest free index, which the last one gave back.
    assert len(seen) == 1 and min(seen) < 32


def test_a_tensor_of_a_stopped_machine_never_reaches_the_next_owner_of_its_index():
    old = mycelya_torch.RemoteMachine(PROVIDER)
    index = old.device().index
    x = torch.arange(4.0, device=old.device())
    old.stop()
    # Cycle machines until one takes the old index.
    for _ in range(40):
        new = mycelya_torch.RemoteMachine(PROVIDER)
        if new.device().index == index:
            break
        new.stop()
    else:
        pytest.fail(f"no new machine took mycelya:{index}")
    try:
        new.synchronize()
        batches = new.batches_sent
        for use in (lambda t: t + 1, lambda t: t.cpu(), lambda t: t.add_(1), lambda t: t.sum().item()):
            with pytest.raises(RuntimeError, match="not running"):
                use(x)
        del x  # its storage's free is not sent to the new machine either
        new.synchronize()
        assert new.batches_sent == batches, "a stopped machine's tensor sent work to its index's new owner"
        y = torch.ones(2, device=new.device())
        assert y.sum().item() == 2.0
    finally:
        new.stop()


def test_an_index_that_names_no_running_machine_is_refused():
    machine = mycelya_torch.RemoteMachine(PROVIDER)
    index = machine.device().index
    machine.stop()
    with pytest.raises(ValueError, match=f"mycelya:{index} is not a device of any running RemoteMachine"):
        torch.ones(2, device=f"mycelya:{index}")
    with pytest.raises(ValueError, match="does not exist"):
        torch.randn(2, 2, device="mycelya:999")  # torch.device wraps it to -25
    with pytest.raises(ValueError, match="does not exist"):
        torch.Generator(device="mycelya:999")
    with pytest.raises(ValueError, match="does not exist"):
        torch.mycelya.set_device(40)
    with pytest.raises(ValueError, match="not a device of any running RemoteMachine"):
        torch.mycelya.set_device(index)


def test_too_many_machines_at_once_says_the_limit():
    free = 32 - torch.mycelya.device_count()
    machines = []
    try:
        with pytest.raises(RuntimeError, match=r"Too many mycelya devices in use.*the limit of 32"):
            for _ in range(33):
                machines.append(mycelya_torch.RemoteMachine("mock", "T4", gpu_count=3))
        assert len(machines) == free // 4  # three cuda devices and a cpu each
    finally:
        for machine in machines:
            machine.stop()
    # The machine that could not start left nothing behind.
    with mycelya_torch.RemoteMachine("mock") as machine:
        assert machine.running


def test_the_cross_machine_error_names_both_devices_and_machines():
    with mycelya_torch.RemoteMachine(PROVIDER) as a, mycelya_torch.RemoteMachine(PROVIDER) as b:
        x = torch.ones(2, device=a.device())
        y = torch.ones(2, device=b.device())
        with pytest.raises(RuntimeError) as info:
            x + y
        message = str(info.value)
        assert "Cannot perform operations between tensors on different remote devices" in message
        assert "Cross-machine remote transfers are not supported" in message
        for machine, device in ((a, a.device()), (b, b.device())):
            assert str(device) in message and machine.machine_id in message


def test_get_all_machines_lists_only_machines_started_and_not_stopped():
    before = mycelya_torch.get_all_machines()
    machine = mycelya_torch.RemoteMachine(PROVIDER)
    assert mycelya_torch.get_all_machines() == [*before, machine]
    machine.stop()
    assert mycelya_torch.get_all_machines() == before


def test_one_current_device_for_every_api(machine):
    with mycelya_torch.RemoteMachine(PROVIDER) as other:
        first, second = machine.device(), other.device()
        torch.mycelya.set_device(first)
        assert torch.mycelya.current_device() == first.index
        assert torch.accelerator.current_device_index() == first.index
        torch.accelerator.set_device_index(second.index)
        assert torch.mycelya.current_device() == second.index
        # A bare "mycelya" means the current device, through the C++ guard.
        assert torch.ones(1, device="mycelya").device == second
        with torch.mycelya.device(first):
            assert torch.accelerator.current_device_index() == first.index
            assert torch.ones(1, device="mycelya").device == first
        assert torch.mycelya.current_device() == second.index
        with torch.accelerator.device_index(first.index):
            assert torch.mycelya.current_device() == first.index
        assert torch.mycelya.current_device() == second.index
        # Leaving a block whose device stopped inside it is no error.
        third = mycelya_torch.RemoteMachine(PROVIDER)
        with torch.mycelya.device(third.device()):
            third.stop()
        assert torch.mycelya.current_device() == second.index
        torch.mycelya.set_device(first)


def test_the_first_machine_started_becomes_current_when_none_is():
    with mycelya_torch.RemoteMachine(PROVIDER), mycelya_torch.RemoteMachine(PROVIDER) as second:
        torch.mycelya.set_device(second.device())
        current = second.device().index
    # The current device now names no machine: the next one started takes over.
    with mycelya_torch.RemoteMachine(PROVIDER) as machine:
        assert machine.device().index != current
        assert torch.mycelya.current_device() == machine.device().index
        torch.mycelya.manual_seed(3)  # the current device: no error
        # A running current device is left alone.
        with mycelya_torch.RemoteMachine(PROVIDER):
            assert torch.mycelya.current_device() == machine.device().index


def test_fork_rng_over_every_index_passes_gaps_by(machine):
    first = mycelya_torch.RemoteMachine(PROVIDER)
    second = mycelya_torch.RemoteMachine(PROVIDER)
    device, gap = second.device(), first.device().index
    first.stop()  # leaves a gap below device_count()
    try:
        assert gap < device.index < torch.mycelya.device_count()
        assert torch.mycelya.get_rng_state(gap).numel() == 0
        torch.mycelya.set_rng_state(torch.mycelya.get_rng_state(gap), gap)
        with pytest.raises(ValueError, match="not a device of any running"):
            torch.ones(1, device=f"mycelya:{gap}")
        torch.manual_seed(5)
        with torch.random.fork_rng(device_type="mycelya"):
            inside = torch.rand(20, device=device).cpu()
        torch.testing.assert_close(torch.rand(20, device=device).cpu(), inside, rtol=0, atol=0)
    finally:
        second.stop()


def test_help_documents_the_device_module():
    assert torch.mycelya.__doc__ and "current device" in torch.mycelya.__doc__
    for name in torch.mycelya.__all__:
        assert getattr(torch.mycelya, name).__doc__, name
