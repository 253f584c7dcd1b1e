# SPDX-License-Identifier: AGPL-3.0-or-later
"""scaled_dot_product_attention on a remote GPU picks the kernel CUDA would pick there.

mock's emulated GPUs report their gpu_type's compute capability; the client
applies CUDA's rules to it (core/cuda_sdp_rules.h). Where CUDA runs flash
attention the client sends the fused op pair (which a GPU server runs with
CUDA's flash kernels, and mock's CPU runs with its own), and the values
match the same attention on this CPU.
"""

import pytest
import torch
import torch.nn.functional as F
from record_ops import RecordOps
from torch.nn.attention import SDPBackend, sdpa_kernel

import mycelya_torch
from conftest import PROVIDER

pytestmark = pytest.mark.skipif(PROVIDER != "mock", reason="mock's emulated GPUs")

FLASH = "_scaled_dot_product_flash_attention_for_cpu.default"
FLASH_BACKWARD = "_scaled_dot_product_flash_attention_for_cpu_backward.default"


@pytest.fixture(scope="module")
def gpus():
    machines = {gpu: mycelya_torch.RemoteMachine("mock", gpu) for gpu in ("H100", "A10G", "T4")}
    yield {gpu: machine.device("cuda") for gpu, machine in machines.items()}
    for machine in machines.values():
        machine.stop()


def qkv(dtype, head_dim=64, q_len=16, kv_len=16, grad=True):
    torch.manual_seed(0)
    shapes = [(2, 4, q_len, head_dim), (2, 4, kv_len, head_dim), (2, 4, kv_len, head_dim)]
    return [torch.randn(shape, dtype=dtype, requires_grad=grad) for shape in shapes]


def run(device, inputs, mask=None, **kwargs):
    """Forward and backward on `device` and on this CPU (in float32): the ops sent, and both results."""
    remote = [t.detach().to(device).requires_grad_(t.requires_grad) for t in inputs]
    remote_mask = None if mask is None else mask.to(device, inputs[0].dtype)
    with RecordOps() as recorded:
        out = F.scaled_dot_product_attention(*remote, attn_mask=remote_mask, **kwargs)
        if out.requires_grad:
            out.float().square().sum().backward()
    local = [t.detach().float().requires_grad_(t.requires_grad) for t in inputs]
    expected = F.scaled_dot_product_attention(*local, attn_mask=mask, **kwargs)
    if expected.requires_grad:
        expected.square().sum().backward()
    return recorded.names, (out, remote), (expected, local)


def assert_matches(actual, expected, tolerance):
    out, remote = actual
    reference, local = expected
    torch.testing.assert_close(out.cpu().float(), reference.detach(), **tolerance)
    for name, r, loc in zip("qkv", remote, local, strict=True):
        if loc.grad is not None:
            torch.testing.assert_close(
                r.grad.cpu().float(), loc.grad, **tolerance, msg=lambda m, n=name: f"d{n}: {m}"
            )


# Against float32 on this CPU: half-precision rounding (bf16 has 8 bits of mantissa).
HALF = {"rtol": 5e-2, "atol": 5e-2}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_an_h100_runs_flash_attention_for_half_inputs(gpus, dtype, causal):
    names, actual, expected = run(gpus["H100"], qkv(dtype), is_causal=causal)
    assert FLASH in names and FLASH_BACKWARD in names
    assert "bmm.default" not in names
    assert_matches(actual, expected, HALF)


def test_autocast_on_a_remote_gpu_gets_flash(gpus):
    device = gpus["H100"]
    q, k, v = (t.to(device) for t in qkv(torch.float32, grad=False))
    with torch.autocast("mycelya", dtype=torch.bfloat16), RecordOps() as recorded:
        out = F.scaled_dot_product_attention(q, k, v)
    assert FLASH in recorded.names and out.dtype == torch.bfloat16
    expected = F.scaled_dot_product_attention(*(t.cpu().bfloat16().float() for t in (q, k, v)))
    torch.testing.assert_close(out.cpu().float(), expected, **HALF)


@pytest.mark.parametrize("case", ["float32", "mask", "causal_rectangle", "turing"])
def test_what_flash_cannot_take_runs_the_math_path(gpus, case):
    # CUDA would run its memory-efficient kernel here, which is not sent yet:
    # the math path runs, with the right values.
    dtype = torch.float32 if case == "float32" else torch.float16
    inputs = qkv(dtype, q_len=8 if case == "causal_rectangle" else 16)
    mask = torch.randn(16, 16).bfloat16().float() if case == "mask" else None
    device = gpus["T4" if case == "turing" else "H100"]
    names, actual, expected = run(device, inputs, mask=mask, is_causal=case == "causal_rectangle")
    assert FLASH not in names and FLASH_BACKWARD not in names
    assert_matches(actual, expected, HALF if dtype == torch.float16 else {})


def test_dropout_runs_the_math_path_with_the_devices_generator(gpus):
    inputs = [t.detach().to(gpus["H100"]) for t in qkv(torch.float16, grad=False)]
    with RecordOps() as recorded:
        torch.manual_seed(3)
        first = F.scaled_dot_product_attention(*inputs, dropout_p=0.5)
        torch.manual_seed(3)
        again = F.scaled_dot_product_attention(*inputs, dropout_p=0.5)
    assert FLASH not in recorded.names
    torch.testing.assert_close(first.cpu(), again.cpu())


def test_training_with_large_heads_on_an_a10g_follows_its_capability(gpus):
    # Compute capability 8.6 lacks the shared memory for flash's backward
    # with head dimensions above 192: CUDA runs it only without grad there.
    names, _, _ = run(gpus["A10G"], qkv(torch.float16, head_dim=200, grad=False))
    assert FLASH in names
    names, actual, expected = run(gpus["A10G"], qkv(torch.float16, head_dim=200))
    assert FLASH not in names
    assert_matches(actual, expected, HALF)
    names, _, _ = run(gpus["H100"], qkv(torch.float16, head_dim=200))
    assert FLASH in names


def test_sdpa_kernel_contexts_are_honoured(gpus):
    device = gpus["H100"]
    inputs = [t.detach().to(device) for t in qkv(torch.float16, grad=False)]
    with sdpa_kernel(SDPBackend.MATH), RecordOps() as recorded:
        F.scaled_dot_product_attention(*inputs)
    assert FLASH not in recorded.names
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), RecordOps() as recorded:
        F.scaled_dot_product_attention(*inputs)
    assert FLASH in recorded.names
    # Only flash allowed, and a T4 has none: CUDA's own error.
    t4_inputs = [t.detach().to(gpus["T4"]) for t in qkv(torch.float16, grad=False)]
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), pytest.raises(RuntimeError, match="No available kernel"):
        F.scaled_dot_product_attention(*t4_inputs)
    # The machine and the device are fine afterwards.
    expected = F.scaled_dot_product_attention(*(t.cpu().float() for t in t4_inputs))
    torch.testing.assert_close(F.scaled_dot_product_attention(*t4_inputs).cpu().float(), expected, **HALF)
