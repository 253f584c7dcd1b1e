# SPDX-License-Identifier: AGPL-3.0-or-later
"""Bad input gets a clear error, and the machine keeps working afterwards."""

import resource
import time

import pytest
import torch

import mycelya_torch
from conftest import PROVIDER


def _still_works(device):
    x = torch.arange(5.0, device=device)
    assert (x * 2).sum().item() == 20.0


def test_mixing_two_machines_is_refused(device):
    other = mycelya_torch.RemoteMachine(PROVIDER)
    try:
        a = torch.ones(3, device=device)
        b = torch.ones(3, device=other.device())
        with pytest.raises(RuntimeError, match="Cross-machine remote transfers are not supported"):
            a + b
        with pytest.raises(RuntimeError, match="Cross-machine remote transfers are not supported"):
            a.copy_(b)
        with pytest.raises(RuntimeError, match="Cross-machine remote transfers are not supported"):
            torch.mm(a.view(1, 3), b.view(3, 1))
    finally:
        other.stop()
    _still_works(device)


def test_mixing_remote_and_non_scalar_cpu_tensors_is_refused(device):
    remote = torch.ones(3, device=device)
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device.*cpu"):
        remote + torch.ones(3)
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        torch.mm(torch.ones(3, 3), torch.ones(3, 3, device=device))
    # zero-dimensional CPU tensors are scalars, as with cuda
    torch.testing.assert_close((remote + torch.tensor(2.0)).cpu(), torch.full((3,), 3.0))
    _still_works(device)


def test_rejected_op_names_the_op_and_the_machine_keeps_working(device):
    a, b = torch.ones(3, 4, device=device), torch.ones(5, 6, device=device)
    with pytest.raises(RuntimeError, match=r"aten::mm.*cannot be multiplied"):
        torch.mm(a, b)
    # Only the remote kernel knows bitwise_and is not defined for float: the
    # error arrives asynchronously, at the next sync point, naming the op.
    bad = torch.ones(3, device=device) & torch.ones(3, device=device)
    with pytest.raises(RuntimeError, match="aten::bitwise_and"):
        bad.cpu()
    _still_works(device)


def test_ops_that_reach_the_machines_files_are_refused_before_anything_is_sent(device, tmp_path):
    target = tmp_path / "from_file"
    with pytest.raises(RuntimeError, match=r"aten::from_file reaches files.*\.to\(device\)"):
        torch.from_file(str(target), shared=True, size=16, dtype=torch.uint8, device=device)
    assert not target.exists()
    # The same file, read locally and moved, is fine.
    target.write_bytes(bytes(range(16)))
    local = torch.from_file(str(target), shared=False, size=16, dtype=torch.uint8)
    torch.testing.assert_close(local.to(device).cpu(), torch.arange(16, dtype=torch.uint8))
    _still_works(device)


def _peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_huge_allocation_returns_at_once_and_fails_cleanly_at_sync(machine, device):
    rss_before = _peak_rss_bytes()
    start = time.monotonic()
    huge = torch.randn(10**10, device=device)  # 40 GB
    elapsed = time.monotonic() - start
    assert huge.shape == (10**10,)
    assert elapsed < 5.0
    assert _peak_rss_bytes() - rss_before < 512 * 2**20  # nothing allocated locally
    with pytest.raises(RuntimeError, match="out of memory on the remote machine"):
        machine.synchronize()
    # The failed tensor stays invalid rather than holding garbage...
    with pytest.raises(RuntimeError, match="out of memory"):
        huge[:3].cpu()
    del huge
    # ...and everything else keeps working.
    _still_works(device)
    machine.synchronize()


def test_errors_of_queued_ops_surface_at_the_next_sync(machine, device):
    ok = torch.ones(4, device=device)
    indices = torch.tensor([0, 9], device=device)  # 9 is out of range: only the remote side knows
    bad = torch.zeros(4, device=device).index_add_(0, indices, torch.ones(2, device=device))
    with pytest.raises(RuntimeError, match="aten::index_add"):
        machine.synchronize()
    with pytest.raises(RuntimeError, match="index_add"):
        bad.cpu()  # never silently wrong
    # results computed from the failed one are invalid too
    derived = bad * 2
    with pytest.raises(RuntimeError, match="index_add"):
        derived.cpu()
    assert ok.sum().item() == 4.0
