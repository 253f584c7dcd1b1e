# SPDX-License-Identifier: AGPL-3.0-or-later
"""torch.mycelya's and torch.accelerator's memory functions report the machine's allocator.

On a cpu device that is the session's own storages there: what tensors hold,
in stream order (after every free queued before the question), with peaks
that are right after frees and resets. Each question is one round trip.
"""

import pytest
import torch

MIB = 1 << 20


@pytest.fixture
def cpu(machine):
    device = machine.device("cpu")
    machine.synchronize()
    return device


def test_allocated_follows_tensors_and_frees(cpu):
    before = torch.mycelya.memory_allocated(cpu)
    x = torch.ones(MIB // 4, device=cpu)  # 1 MiB of float32
    assert torch.mycelya.memory_allocated(cpu) == before + MIB
    y = torch.zeros(MIB // 2, device=cpu)
    assert torch.mycelya.memory_allocated(cpu) == before + 3 * MIB
    del x
    # The free is queued, not sent; the question goes after it.
    assert torch.mycelya.memory_allocated(cpu) == before + 2 * MIB
    del y
    assert torch.mycelya.memory_allocated(cpu) == before


def test_peaks_are_right_after_frees_and_resets(cpu):
    torch.mycelya.reset_peak_memory_stats(cpu)
    base = torch.mycelya.memory_allocated(cpu)
    assert torch.mycelya.max_memory_allocated(cpu) == base
    a = torch.ones(MIB, device=cpu)  # 4 MiB
    b = torch.ones(MIB // 2, device=cpu)  # 2 MiB
    del a
    assert torch.mycelya.memory_allocated(cpu) == base + 2 * MIB
    assert torch.mycelya.max_memory_allocated(cpu) == base + 6 * MIB
    assert torch.mycelya.max_memory_reserved(cpu) == base + 6 * MIB
    torch.mycelya.reset_peak_memory_stats(cpu)
    assert torch.mycelya.max_memory_allocated(cpu) == base + 2 * MIB
    del b
    assert torch.mycelya.max_memory_allocated(cpu) == base + 2 * MIB
    assert torch.mycelya.memory_allocated(cpu) == base


def test_torch_accelerator_reports_the_same(cpu):
    x = torch.ones(1000, device=cpu)  # noqa: F841 -- held while asked about
    with torch.mycelya.device(cpu):
        assert torch.accelerator.memory_allocated() == torch.mycelya.memory_allocated(cpu)
        stats = torch.accelerator.memory_stats()
    assert stats["allocated_bytes.all.current"] == torch.mycelya.memory_allocated(cpu)
    assert torch.mycelya.memory_stats(cpu)["reserved_bytes.all.current"] == torch.mycelya.memory_reserved(cpu)
    assert torch.mycelya.memory_stats(cpu)["allocated_bytes.all.allocated"] >= 4000


def test_mem_get_info_is_the_sessions_limit(machine, cpu):
    free, total = torch.mycelya.mem_get_info(cpu)
    limit = machine.memory_stats()["memory_limit"]
    assert total == limit
    x = torch.ones(MIB, device=cpu)  # noqa: F841 -- 4 MiB held
    free_after, _ = torch.mycelya.mem_get_info(cpu)
    assert free - free_after >= 4 * MIB


def test_each_question_is_one_round_trip(machine, cpu):
    torch.mycelya.memory_allocated(cpu)
    before = machine.round_trips
    torch.mycelya.memory_allocated(cpu)
    torch.mycelya.max_memory_allocated(cpu)
    torch.mycelya.reset_peak_memory_stats(cpu)
    torch.mycelya.empty_cache()
    assert machine.round_trips - before == 4


def test_a_training_step_logs_its_peak(cpu):
    torch.mycelya.reset_peak_memory_stats(cpu)
    base = torch.mycelya.memory_allocated(cpu)
    model = torch.nn.Linear(256, 256).to(cpu)
    loss = model(torch.randn(64, 256, device=cpu)).square().mean()
    loss.backward()
    # Weights, bias, their gradients and the activations were all held at once.
    held = torch.mycelya.max_memory_allocated(cpu) - base
    assert held >= 2 * (256 * 256 + 256) * 4 + 64 * 256 * 4
