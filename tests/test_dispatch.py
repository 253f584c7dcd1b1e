# SPDX-License-Identifier: AGPL-3.0-or-later
"""The fallback caches what meta says per argument metadata; cached answers must
never leak into calls whose metadata differs."""

import torch


def test_same_op_with_changing_shapes_strides_and_dtypes(device):
    for shape in [(3,), (2, 3), (4, 1, 5), (0, 2)]:
        cpu = torch.randn(shape)
        remote = cpu.to(device)
        for a, b in [
            (remote, cpu),
            (remote.t() if remote.dim() == 2 else remote, cpu.t() if cpu.dim() == 2 else cpu),
        ]:
            out = a * 2 + 1
            assert out.shape == b.shape
            if out.numel():
                assert out.stride() == (b * 2 + 1).stride()
            torch.testing.assert_close(out.cpu(), b * 2 + 1)
        for dtype in (torch.float64, torch.int32, torch.bool):
            converted = remote.to(dtype)
            assert converted.dtype == dtype
            torch.testing.assert_close(converted.cpu(), cpu.to(dtype))


def test_aliasing_between_arguments_is_part_of_the_key(device):
    cpu_x, cpu_y = torch.arange(4.0), torch.ones(4)
    x, y = cpu_x.to(device), cpu_y.to(device)
    for _ in range(2):  # the second round hits the cache
        x.add_(y)
        cpu_x.add_(cpu_y)
        x.add_(x)
        cpu_x.add_(cpu_x)
        x[1:].add_(x[:-1].clone())
        cpu_x[1:].add_(cpu_x[:-1].clone())
        torch.testing.assert_close(x.cpu(), cpu_x)


def test_out_resize_then_reuse(device):
    out = torch.empty(0, device=device)
    for n in (2, 5, 3):
        a = torch.arange(float(n), device=device)
        torch.mul(a, 3, out=out)
        assert out.shape == (n,)
        torch.testing.assert_close(out.cpu(), torch.arange(float(n)) * 3)


def test_default_dtype_changes_are_seen(device):
    old = torch.get_default_dtype()
    try:
        for dtype in (torch.float32, torch.float64, torch.float32):
            torch.set_default_dtype(dtype)
            t = torch.ones(3, device=device) * torch.tensor(1.5)
            assert t.dtype == dtype
            r = torch.randn(2, device=device)
            assert r.dtype == dtype
            assert torch.arange(0, 1, 0.25, device=device).dtype == dtype
    finally:
        torch.set_default_dtype(old)


def test_views_from_cached_plans_keep_their_offsets(device):
    base = torch.arange(24.0).view(4, 6)
    remote = base.to(device)
    for _ in range(3):
        for row in range(4):
            torch.testing.assert_close(remote[row, 1:4].cpu(), base[row, 1:4])
            torch.testing.assert_close(remote.t()[row + 1].cpu(), base.t()[row + 1])


def test_float_scalars_that_set_shapes_are_keyed(device):
    for end in (1.0, 2.5, 4.0):
        out = torch.empty(0, device=device)
        torch.arange(0.0, end, 0.5, out=out)
        torch.testing.assert_close(out.cpu(), torch.arange(0.0, end, 0.5))
        torch.testing.assert_close(torch.linspace(0, end, 5, device=device).cpu(), torch.linspace(0, end, 5))


def test_float_scalars_that_do_not_set_shapes_still_reach_the_kernel(device):
    x = torch.ones(3, device=device)
    for value in (0.5, -2.0, 3.25):
        y = torch.ones(3, device=device)
        y.addcdiv_(x, x * 2, value=value)
        torch.testing.assert_close(y.cpu(), torch.full((3,), 1 + value / 2))


def test_resize_to_the_same_sizes_keeps_the_strides_as_on_cpu(device):
    # PyTorch's resize_ keeps the layout of a tensor that already has the sizes asked
    # for, unless a memory format is asked for too; out= arguments rely on it.
    for memory_format in (None, torch.contiguous_format):
        kwargs = {} if memory_format is None else {"memory_format": memory_format}
        cpu = torch.empty(5, 3).t().resize_(3, 5, **kwargs)
        remote = torch.empty(5, 3, device=device).t().resize_(3, 5, **kwargs)
        assert remote.stride() == cpu.stride(), memory_format
    # torch.linalg.lu_factor(out=) with a column-major output keeps it column-major.
    a = torch.randn(4, 4)
    lu, pivots = torch.empty(4, 4).t(), torch.empty(4, dtype=torch.int32)
    remote_lu = torch.empty(4, 4, device=device).t()
    remote_pivots = torch.empty(4, dtype=torch.int32, device=device)
    torch.linalg.lu_factor(a, out=(lu, pivots))
    torch.linalg.lu_factor(a.to(device), out=(remote_lu, remote_pivots))
    assert remote_lu.stride() == lu.stride() == (1, 4)
    torch.testing.assert_close(remote_lu.cpu(), lu)
    torch.testing.assert_close(remote_pivots.cpu(), pivots)
