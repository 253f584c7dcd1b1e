# SPDX-License-Identifier: AGPL-3.0-or-later
"""Views are answered locally, yet every value must match the CPU."""

import pytest
import torch

import mycelya_torch


def _pair(device, *shape):
    cpu = torch.randn(*shape)
    return cpu, cpu.to(device)


def test_view_ops_match_cpu(device):
    cpu, remote = _pair(device, 4, 6)
    cases = [
        lambda t: t.t(),
        lambda t: t[1:3, ::2],
        lambda t: t.view(2, 12),
        lambda t: t.reshape(3, 8),
        lambda t: t.unsqueeze(0).expand(3, 4, 6),
        lambda t: t.permute(1, 0)[2],
        lambda t: t.narrow(1, 2, 3),
        lambda t: t.diagonal(),
        lambda t: t.unfold(1, 2, 2),
        lambda t: t.as_strided((2, 2), (1, 6), 3),
        lambda t: t.flatten()[5:17:3],
        lambda t: t.select(1, 4),
        lambda t: torch.view_as_real(torch.complex(t, t)),
    ]
    for case in cases:
        torch.testing.assert_close(case(remote).cpu(), case(cpu))


def test_views_share_storage_and_send_nothing(machine, device):
    _, remote = _pair(device, 8, 8)
    machine.synchronize()
    sent = machine.batches_sent
    view = remote.t()[2:5]
    assert view.untyped_storage().data_ptr() == remote.untyped_storage().data_ptr()
    assert view._base is remote
    machine.synchronize()
    assert machine.batches_sent == sent  # only the sync request, no batch


def test_in_place_ops_on_views_write_through(device):
    cpu, remote = _pair(device, 5, 7)
    for t in (cpu, remote):
        t[:, 1].mul_(10)
        t[2:4, 3:].add_(1.5)
        t.t()[0].zero_()
        t.diagonal().fill_(-1)
        v = t.view(35)[::4]
        v.sub_(v.clone())
    torch.testing.assert_close(remote.cpu(), cpu)


def test_out_variants_resize_and_write(device):
    cpu, remote = _pair(device, 3, 4)
    out_cpu, out_remote = torch.empty(0), torch.empty(0, device=device)
    torch.add(cpu, 2, out=out_cpu)
    torch.add(remote, 2, out=out_remote)
    assert out_remote.shape == (3, 4)
    torch.testing.assert_close(out_remote.cpu(), out_cpu)

    sums_cpu, sums_remote = torch.empty(3), torch.empty(3, device=device)
    torch.sum(cpu, dim=1, out=sums_cpu)
    torch.sum(remote, dim=1, out=sums_remote)
    torch.testing.assert_close(sums_remote.cpu(), sums_cpu)

    values, indices = torch.empty(0, device=device), torch.empty(0, dtype=torch.long, device=device)
    torch.max(remote, dim=0, out=(values, indices))
    expected_values, expected_indices = torch.max(cpu, dim=0)
    torch.testing.assert_close(values.cpu(), expected_values)
    torch.testing.assert_close(indices.cpu(), expected_indices)

    # out= into a view of a bigger tensor
    big_cpu, big_remote = torch.zeros(6, 4), torch.zeros(6, 4, device=device)
    torch.mul(cpu, 3, out=big_cpu[1:4])
    torch.mul(remote, 3, out=big_remote[1:4])
    torch.testing.assert_close(big_remote.cpu(), big_cpu)


@pytest.mark.parametrize(
    "make_view",
    [
        lambda t: t.t(),
        lambda t: t[:, ::3],
        lambda t: t[1:, 2:].transpose(0, 1),
        lambda t: t.unsqueeze(1).expand(6, 3, 9),
        lambda t: t.as_strided((3, 3), (10, 2), 4),
    ],
)
def test_cpu_of_non_contiguous_views(device, make_view):
    cpu, remote = _pair(device, 6, 9)
    view = make_view(remote)
    assert not view.is_contiguous()
    torch.testing.assert_close(view.cpu(), make_view(cpu))


def test_copy_into_remote_views_and_between_remote_tensors(device):
    cpu, remote = _pair(device, 4, 4)
    patch = torch.arange(4.0)
    cpu[:, 2] = patch
    remote[:, 2] = patch
    torch.testing.assert_close(remote.cpu(), cpu)

    other = torch.empty(4, 4, device=device)
    other.copy_(remote.t())
    torch.testing.assert_close(other.cpu(), cpu.t())
    # dtype conversion on the way in and out
    as_double = remote.to(torch.float64)
    assert as_double.dtype == torch.float64
    torch.testing.assert_close(as_double.cpu(), cpu.double())
    torch.testing.assert_close(remote.to(torch.int32).cpu(), cpu.to(torch.int32))


def test_resize_and_set(device):
    remote = torch.arange(6.0, device=device)
    remote.resize_(2, 3)
    torch.testing.assert_close(remote.cpu(), torch.arange(6.0).view(2, 3))
    remote.resize_(4, 4)  # grows: the first six values survive
    torch.testing.assert_close(remote.cpu().flatten()[:6], torch.arange(6.0))
    target = torch.empty(0, device=device)
    target.set_(remote)
    assert target.shape == (4, 4)
    assert target.untyped_storage().data_ptr() == remote.untyped_storage().data_ptr()


def test_copies_between_devices_of_one_machine():
    # The expected values are the local tensor's, never read back through the
    # copies under test.
    local = torch.randn(3, 5)
    with mycelya_torch.RemoteMachine("mock", "T4") as machine:
        on_gpu = local.to(machine.device("cuda"))
        on_cpu = on_gpu.t().to(machine.device("cpu"))
        assert on_cpu.device == machine.device("cpu")
        torch.testing.assert_close(on_cpu.cpu(), local.t())
        back = torch.empty(5, 3, device=machine.device("cuda"))
        back.copy_(on_cpu * 2)
        torch.testing.assert_close(back.cpu(), local.t() * 2)
