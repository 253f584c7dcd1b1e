# SPDX-License-Identifier: AGPL-3.0-or-later
"""torch.autocast on mycelya devices (core/autocast_kernels.cpp), and GradScaler.

Casts happen on the client by the policy of the device type the tensors live
on at the machine: on a cpu device CPU's, compared here with CPU's own
autocast; on a cuda device CUDA's, checked on mock's emulated cuda against
the dtypes PyTorch's autocast documentation lists for CUDA.
"""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mycelya_torch
from conftest import PROVIDER


def _cpu_device(machine):
    return machine.device("cpu")


def test_autocast_is_available_with_its_dtype(device):
    assert torch.amp.is_autocast_available("mycelya")
    with torch.autocast("mycelya", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("mycelya")
        assert torch.get_autocast_dtype("mycelya") == torch.bfloat16
    assert not torch.is_autocast_enabled("mycelya")
    with torch.amp.autocast(device_type="mycelya", dtype=torch.float16):
        assert torch.get_autocast_dtype("mycelya") == torch.float16


def _inputs():
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    return {
        "a": randn(4, 5),
        "b": randn(5, 3),
        "image": randn(2, 3, 6, 6),
        "kernel": randn(4, 3, 3, 3),
        "batch": randn(2, 4, 5),
        "batch2": randn(2, 5, 3),
        "target": torch.rand(4, 5, generator=generator),
    }


# name -> fn(tensors): one op each, as a training script calls them.
OPS = {
    "mm": lambda t: t["a"] @ t["b"],
    "linear": lambda t: F.linear(t["a"], t["b"].t()),
    "conv2d": lambda t: F.conv2d(t["image"], t["kernel"]),
    "bmm": lambda t: torch.bmm(t["batch"], t["batch2"]),
    "addmm": lambda t: torch.addmm(t["a"] @ t["b"], t["a"], t["b"]),
    "exp": lambda t: torch.exp(t["a"]),
    "softmax": lambda t: torch.softmax(t["a"], -1),
    "log_softmax": lambda t: F.log_softmax(t["a"], -1),
    "sum": lambda t: t["a"].sum(),
    "layer_norm": lambda t: F.layer_norm(t["a"], (5,)),
    "mse_loss": lambda t: F.mse_loss(t["a"], t["target"]),
    "cross_entropy": lambda t: F.cross_entropy(t["a"], t["target"].argmax(-1)),
    "cat of low and float": lambda t: torch.cat([t["a"] @ t["b"], t["b"]]),
    "stack": lambda t: torch.stack([t["a"], t["a"] * 2]),
    "relu": lambda t: torch.relu(t["a"]),
    "matmul then softmax": lambda t: torch.softmax(t["a"] @ t["b"], -1),
}


def _run(op, device, dtype):
    tensors = {name: x.to(device) for name, x in _inputs().items()}
    with torch.autocast(torch.device(device).type, dtype=dtype):
        return op(tensors)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", OPS)
def test_cpu_device_follows_cpus_autocast(machine, name, dtype):
    expected = _run(OPS[name], "cpu", dtype)
    actual = _run(OPS[name], _cpu_device(machine), dtype)
    assert actual.dtype == expected.dtype, (
        f"{name}: {actual.dtype} where CPU's autocast gives {expected.dtype}"
    )
    torch.testing.assert_close(actual.cpu(), expected)


# What CUDA's autocast gives each op for float16 inputs' float32 arguments,
# from PyTorch's "Automatic Mixed Precision" op reference (CUDA lists).
CUDA_DTYPES = {
    "mm": "low",
    "linear": "low",
    "conv2d": "low",
    "bmm": "low",
    "addmm": "low",
    "exp": torch.float32,  # autocast to float32
    "softmax": torch.float32,  # float32 dtype argument set
    "log_softmax": torch.float32,
    "sum": torch.float32,
    "layer_norm": torch.float32,
    "mse_loss": torch.float32,
    "cross_entropy": torch.float32,  # log_softmax and nll_loss in float32
    "cat of low and float": torch.float32,  # promoted to the widest
    "stack": torch.float32,  # not listed: runs in its inputs' type
    "relu": torch.float32,
    "matmul then softmax": torch.float32,
}


@pytest.fixture(scope="module")
def emulated_cuda():
    if PROVIDER != "mock":
        pytest.skip("mock's emulated cuda device; a GPU machine runs CUDA's policy the same way")
    with mycelya_torch.RemoteMachine("mock", "H100") as machine:
        yield machine.device("cuda")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", OPS)
def test_cuda_device_follows_cudas_policy(emulated_cuda, name, dtype):
    expected = CUDA_DTYPES[name]
    expected = dtype if expected == "low" else expected
    actual = _run(OPS[name], emulated_cuda, dtype)
    assert actual.dtype == expected, f"{name}: {actual.dtype}, CUDA's policy gives {expected}"
    # The values are those of the same casts done by hand on CPU.
    tensors = _inputs()
    if expected == dtype:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    reference = OPS[name](tensors)
    torch.testing.assert_close(actual.cpu().float(), reference.float(), atol=2e-2, rtol=2e-2)


def test_cuda_refuses_binary_cross_entropy_as_cuda_does(emulated_cuda, machine):
    probabilities = torch.rand(4, device=emulated_cuda)
    with torch.autocast("mycelya", dtype=torch.float16):
        with pytest.raises(RuntimeError, match="unsafe to autocast"):
            F.binary_cross_entropy(probabilities, torch.ones(4, device=emulated_cuda))
        # The safe form works, in float32.
        loss = F.binary_cross_entropy_with_logits(probabilities, torch.ones(4, device=emulated_cuda))
    assert loss.dtype == torch.float32
    # On a cpu device CPU's policy allows it.
    cpu = _cpu_device(machine)
    with torch.autocast("mycelya", dtype=torch.float16):
        assert (
            F.binary_cross_entropy(torch.rand(4, device=cpu), torch.ones(4, device=cpu)).dtype
            == torch.float32
        )


def test_outside_autocast_nothing_is_cast(device):
    x = torch.randn(3, 3, device=device)
    assert (x @ x).dtype == torch.float32
    with torch.autocast("mycelya", dtype=torch.bfloat16, enabled=False):
        assert (x @ x).dtype == torch.float32


class _Block(nn.Module):
    """A pre-norm transformer-style block: attention, MLP, layer norms, residuals."""

    def __init__(self, width=16, heads=2):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x).mean(1)


def _train(device, dtype, steps=4, scaler=None):
    torch.manual_seed(0)
    model = _Block().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(4, 6, 16, generator=generator).to(device)
        y = torch.randint(0, 10, (4,), generator=generator).to(device)
        with torch.autocast(torch.device(device).type, dtype=dtype):
            loss = F.cross_entropy(model(x), y)
        assert loss.dtype == torch.float32
        optimizer.zero_grad()
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
        losses.append(loss.detach().cpu())
    return torch.stack(losses), [p.detach().cpu() for p in model.parameters()]


def test_bf16_training_matches_cpu_autocast_step_by_step(machine):
    expected_losses, expected_params = _train("cpu", torch.bfloat16)
    losses, params = _train(_cpu_device(machine), torch.bfloat16)
    torch.testing.assert_close(losses, expected_losses)
    torch.testing.assert_close(params, expected_params)


def test_fp16_training_with_grad_scaler_matches_cpu(machine):
    cpu_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    expected_losses, expected_params = _train("cpu", torch.float16, scaler=cpu_scaler)
    scaler = torch.amp.GradScaler("mycelya", init_scale=2.0**8)
    losses, params = _train(_cpu_device(machine), torch.float16, scaler=scaler)
    torch.testing.assert_close(losses, expected_losses)
    torch.testing.assert_close(params, expected_params)
    assert scaler.get_scale() == cpu_scaler.get_scale()


def test_grad_scaler_skips_a_step_with_inf_and_backs_off(device, machine):
    cpu = _cpu_device(machine)
    weight = nn.Parameter(torch.ones(3, device=cpu))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scaler = torch.amp.GradScaler("mycelya", init_scale=4.0, growth_interval=1)
    scaler.scale((weight * torch.tensor([1.0, float("inf"), 1.0], device=cpu)).sum()).backward()
    round_trips = machine.round_trips
    scaler.step(optimizer)
    # One sync per step, as on CUDA: the found-inf flags' .item().
    assert machine.round_trips - round_trips <= 1
    scaler.update()
    torch.testing.assert_close(weight.detach().cpu(), torch.ones(3))
    assert scaler.get_scale() == 2.0
    optimizer.zero_grad()
    scaler.scale((weight * 2).sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    torch.testing.assert_close(weight.detach().cpu(), torch.full((3,), 0.8))
    assert scaler.get_scale() == 4.0


def test_cached_casts_are_reused_within_a_region(device):
    layer = nn.Linear(4, 4).to(device)
    x = torch.randn(2, 4, device=device)
    with torch.autocast("mycelya", dtype=torch.bfloat16):
        first, second = layer(x), layer(x)
    torch.testing.assert_close(first.cpu(), second.cpu(), rtol=0, atol=0)
    # The weight's own dtype is untouched.
    assert layer.weight.dtype == torch.float32
    expected = copy.deepcopy(layer).cpu()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(first.cpu(), expected(x.cpu()))
