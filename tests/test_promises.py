# SPDX-License-Identifier: AGPL-3.0-or-later
"""Promises of README's API table and its Devices and Random numbers paragraphs
that no other suite checks: PyTorch's generated helpers for the backend
(tensor.mycelya(), module.mycelya()), torch.mycelya.seed() and initial_seed()
as torch.cuda's, and one current device per thread."""

import threading

import pytest
import torch

import mycelya_torch
from conftest import PROVIDER


@pytest.fixture(scope="module")
def two_machines():
    first = mycelya_torch.RemoteMachine(PROVIDER)
    second = mycelya_torch.RemoteMachine(PROVIDER)
    yield first, second
    first.stop()
    second.stop()


def test_tensor_mycelya_moves_to_the_current_device(two_machines):
    first, second = two_machines
    cpu = torch.arange(12.0).reshape(3, 4)
    with torch.mycelya.device(second.device()):
        moved = cpu.mycelya()
    assert moved.is_mycelya and not cpu.is_mycelya
    assert moved.device == second.device()
    torch.testing.assert_close(moved.cpu(), cpu)
    # An explicit index goes there instead, as tensor.cuda(1) does.
    explicit = cpu.mycelya(first.device().index)
    assert explicit.device == first.device()
    torch.testing.assert_close((explicit * 2).cpu(), cpu * 2)


def test_module_mycelya_moves_parameters_and_buffers_to_the_current_device(two_machines):
    _, second = two_machines
    local = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    remote = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    remote.load_state_dict(local.state_dict())
    with torch.mycelya.device(second.device()):
        assert remote.mycelya() is remote  # in place, as module.cuda()
    for tensor in [*remote.parameters(), *remote.buffers()]:
        assert tensor.device == second.device()
    batch = torch.randn(5, 4)
    torch.testing.assert_close(remote(batch.to(second.device())).cpu(), local(batch))


def test_seed_sets_a_fresh_seed_that_initial_seed_reports(machine):
    device = machine.device()
    with torch.mycelya.device(device):
        assert torch.mycelya.seed() is None  # as torch.cuda.seed()
        first = torch.mycelya.initial_seed()
        drawn = torch.randn(100, device=device).cpu()
        torch.mycelya.seed()
        second = torch.mycelya.initial_seed()
        # Two random 64-bit seeds are equal with probability 2**-64.
        assert second != first
        assert not torch.equal(torch.randn(100, device=device).cpu(), drawn)
        # The seed initial_seed() reports reproduces the draws that followed it ...
        torch.mycelya.manual_seed(first)
        assert torch.mycelya.initial_seed() == first
        torch.testing.assert_close(torch.randn(100, device=device).cpu(), drawn)
    # ... and, on the machine's CPU, a local CPU generator seeded alike draws them too.
    torch.testing.assert_close(drawn, torch.randn(100, generator=torch.Generator().manual_seed(first)))


def test_seed_seeds_the_current_device_only(two_machines):
    first, second = two_machines
    with torch.mycelya.device(first.device()):
        torch.mycelya.manual_seed(5)
    with torch.mycelya.device(second.device()):
        torch.mycelya.seed()
    with torch.mycelya.device(first.device()):
        assert torch.mycelya.initial_seed() == 5


def test_each_thread_has_its_own_current_device(two_machines):
    first, second = two_machines
    third = mycelya_torch.RemoteMachine(PROVIDER)
    torch.mycelya.set_device(first.device())
    other_set = threading.Event()
    main_moved = threading.Event()
    seen = {}

    def other_thread():
        torch.mycelya.set_device(second.device())
        other_set.set()
        main_moved.wait()
        seen["current"] = torch.mycelya.current_device()
        seen["bare"] = torch.ones(2, device="mycelya").device

    thread = threading.Thread(target=other_thread)
    thread.start()
    assert other_set.wait(60), "the other thread never set its device"
    # The other thread's set_device left this thread's current device alone ...
    assert torch.mycelya.current_device() == first.device().index
    assert torch.accelerator.current_device_index() == first.device().index
    assert torch.ones(2, device="mycelya").device == first.device()
    # ... and this thread's guard leaves the other thread's alone.
    with torch.mycelya.device(third.device()):
        assert torch.mycelya.current_device() == third.device().index
        main_moved.set()
        thread.join(60)
    assert not thread.is_alive()
    assert seen == {"current": second.device().index, "bare": second.device()}
    assert torch.mycelya.current_device() == first.device().index
    third.stop()
