# SPDX-License-Identifier: AGPL-3.0-or-later
"""Ops whose output shape depends on data run synchronously and still match CPU."""

import torch


def test_data_dependent_shapes(device):
    cpu = torch.tensor([[0.0, 1.5, -2.0], [3.0, 0.0, 1.5]])
    remote = cpu.to(device)
    torch.testing.assert_close(torch.nonzero(remote).cpu(), torch.nonzero(cpu))
    torch.testing.assert_close(remote[remote > 0].cpu(), cpu[cpu > 0])
    torch.testing.assert_close(
        torch.masked_select(remote, remote < 1).cpu(), torch.masked_select(cpu, cpu < 1)
    )
    values, counts = torch.unique(remote, return_counts=True)
    expected_values, expected_counts = torch.unique(cpu, return_counts=True)
    torch.testing.assert_close(values.cpu(), expected_values)
    torch.testing.assert_close(counts.cpu(), expected_counts)
    # results of dynamic ops are ordinary remote tensors
    torch.testing.assert_close((torch.nonzero(remote) * 2).cpu(), torch.nonzero(cpu) * 2)


def test_item_and_scalars(device):
    remote = torch.tensor([1.25, 2.5], device=device)
    assert remote.sum().item() == 3.75
    assert remote[1].item() == 2.5
    assert torch.tensor(7, device=device).item() == 7
    assert bool((remote > 2).any())
    assert remote.tolist() == [1.25, 2.5]
