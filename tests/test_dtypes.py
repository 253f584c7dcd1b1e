# SPDX-License-Identifier: AGPL-3.0-or-later
"""Every common dtype round-trips and computes on mycelya as on the CPU, and
type promotion picks the same result dtypes."""

import pytest
import torch

DTYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
    torch.complex64,
]


def _sample(dtype, *shape):
    if dtype == torch.bool:
        return torch.rand(*shape) > 0.5
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(*shape, dtype=dtype)
    low = 0 if dtype == torch.uint8 else -50
    return torch.randint(low, 50, shape, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_trip_is_exact(device, dtype):
    x = _sample(dtype, 7, 5)
    remote = x.to(device)
    assert remote.dtype == dtype
    back = remote.cpu()
    assert back.dtype == dtype
    torch.testing.assert_close(back, x, rtol=0, atol=0)
    # A non-contiguous view and a scalar come back exactly too.
    torch.testing.assert_close(remote.t()[1:, ::2].cpu(), x.t()[1:, ::2], rtol=0, atol=0)
    assert remote[2, 3].item() == x[2, 3].item()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_arithmetic_and_reductions_match_cpu(device, dtype):
    a, b = _sample(dtype, 6, 4), _sample(dtype, 6, 4)
    ra, rb = a.to(device), b.to(device)
    cases = {
        "add": lambda p, q: p + q,
        "mul": lambda p, q: p * q,
        "max": lambda p, q: torch.maximum(p, q) if not p.is_complex() else p,
        "eq": lambda p, q: p == q,
        "where": lambda p, q: torch.where(p == q, p, q),
        "cat": lambda p, q: torch.cat([p, q], 1),
        "sum": lambda p, q: p.sum(0),
        "to_float": lambda p, q: p.to(torch.float32) if not p.is_complex() else p.real,
    }
    if dtype != torch.bool:
        cases["sub"] = lambda p, q: p - q
    for name, fn in cases.items():
        expected, actual = fn(a, b), fn(ra, rb).cpu()
        assert actual.dtype == expected.dtype, name
        torch.testing.assert_close(actual, expected, msg=lambda m, n=name: f"{n}: {m}")


PROMOTIONS = [
    (torch.int8, torch.uint8),
    (torch.int32, torch.float16),
    (torch.int64, torch.float32),
    (torch.bfloat16, torch.float16),
    (torch.bool, torch.int16),
    (torch.float32, torch.complex64),
    (torch.float64, torch.complex64),
    (torch.uint8, torch.bool),
]


@pytest.mark.parametrize(("left", "right"), PROMOTIONS, ids=lambda d: str(d).removeprefix("torch."))
def test_type_promotion_matches_cpu(device, left, right):
    a, b = _sample(left, 5), _sample(right, 5)
    expected = a * b
    actual = a.to(device) * b.to(device)
    assert actual.dtype == expected.dtype
    torch.testing.assert_close(actual.cpu(), expected)
    # With a Python scalar and a zero-dim CPU tensor, as PyTorch allows.
    assert (a.to(device) + 2.5).dtype == (a + 2.5).dtype
    scalar = torch.tensor(3, dtype=right)
    torch.testing.assert_close((a.to(device) * scalar).cpu(), a * scalar)


def test_division_of_integers_gives_floats(device):
    a = torch.tensor([7, -7, 9], dtype=torch.int64)
    b = torch.tensor([2, 2, 4], dtype=torch.int64)
    ra, rb = a.to(device), b.to(device)
    torch.testing.assert_close((ra / rb).cpu(), a / b)
    torch.testing.assert_close((ra // rb).cpu(), a // b)
    torch.testing.assert_close(
        torch.div(ra, rb, rounding_mode="trunc").cpu(), torch.div(a, b, rounding_mode="trunc")
    )


def test_conjugate_and_negative_views_compute_as_on_cpu(device):
    # x.conj() and x.mH are lazy views (a bit on the tensor): matmul and dot
    # read the bit on the machine, as they do on a CPU or GPU.
    a = torch.randn(4, 3, dtype=torch.complex64)
    b = torch.randn(3, 5, dtype=torch.complex64)
    ra, rb = a.to(device), b.to(device)
    torch.testing.assert_close((ra.conj() @ rb).cpu(), a.conj() @ b)
    torch.testing.assert_close((ra @ ra.mH).cpu(), a @ a.mH)
    torch.testing.assert_close(torch.vdot(ra[0], ra[1]).cpu(), torch.vdot(a[0], a[1]))
    torch.testing.assert_close(ra.conj()[1, 2].item(), a.conj()[1, 2].item())
    torch.testing.assert_close(ra.conj().clone().cpu(), a.conj())
    torch.testing.assert_close(torch.ops.aten._neg_view(ra).cpu(), -a)
    # In place through a conjugate view, and copies into one.
    expected, actual = a.clone(), ra.clone()
    expected.conj().mul_(2)
    actual.conj().mul_(2)
    torch.testing.assert_close(actual.cpu(), expected)
    target = torch.zeros(4, 3, dtype=torch.complex64, device=device)
    target.conj().copy_(ra)
    torch.testing.assert_close(target.cpu(), a.conj())
