# SPDX-License-Identifier: AGPL-3.0-or-later
"""Small real models train on the machine exactly as on the CPU, with every
optimizer's default and foreach paths, and their state_dicts save and load."""

import copy
import io

import pytest
import torch
import torch.nn as nn
from record_ops import RecordOps
from torch.nn.attention import SDPBackend, sdpa_kernel


def _train_and_compare(device, model, make_input, optimizer_cls, steps=3, **optimizer_kwargs):
    reference, remote = model, copy.deepcopy(model).to(device)
    reference_optimizer = optimizer_cls(reference.parameters(), **optimizer_kwargs)
    remote_optimizer = optimizer_cls(remote.parameters(), **optimizer_kwargs)
    for _ in range(steps):
        x = make_input()
        reference_optimizer.zero_grad()
        reference_loss = reference(x).pow(2).mean()
        reference_loss.backward()
        reference_optimizer.step()
        remote_optimizer.zero_grad()
        remote_loss = remote(x.to(device)).pow(2).mean()
        remote_loss.backward()
        remote_optimizer.step()
        torch.testing.assert_close(remote_loss.cpu(), reference_loss.detach())
    for (name, expected), actual in zip(reference.named_parameters(), remote.parameters(), strict=True):
        torch.testing.assert_close(actual.cpu(), expected.detach(), msg=lambda m, n=name: f"{n}: {m}")


def test_cnn_with_batchnorm_and_pooling(device):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )
    _train_and_compare(device, model, lambda: torch.randn(4, 3, 16, 16), torch.optim.SGD, lr=0.1)


@pytest.mark.parametrize("foreach", [False, True])
def test_transformer_encoder(device, foreach):
    # SGD, not Adam: some attention gradients are zero up to rounding (the key
    # bias cannot change a softmax), and Adam would scale that noise up to lr.
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    _train_and_compare(
        device, model, lambda: torch.randn(2, 5, 16), torch.optim.SGD, lr=0.1, momentum=0.9, foreach=foreach
    )


def test_mlp_with_momentum_sgd(device):
    model = nn.Sequential(nn.Linear(10, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 2))
    _train_and_compare(device, model, lambda: torch.randn(8, 10), torch.optim.SGD, lr=0.1, momentum=0.9)


def _mlp():
    return nn.Sequential(
        nn.Linear(10, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 2)
    ), lambda: torch.randn(8, 10)


def _cnn():
    # No bias before batch norm (as usual): its gradient is zero up to rounding,
    # which Adam would scale up to lr.
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 3),
    )
    return model, lambda: torch.randn(2, 3, 8, 8)


def _transformer():
    # float64: some attention gradients are zero up to rounding (the key bias
    # cannot change a softmax), and Adam scales float32 rounding noise up to lr.
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).double()
    return model, lambda: torch.randn(2, 5, 16, dtype=torch.float64)


OPTIMIZERS = {
    "sgd": (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    "adam": (torch.optim.Adam, {"lr": 1e-3}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 0.1}),
}


@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("make_model", [_mlp, _cnn, _transformer], ids=["mlp", "cnn", "transformer"])
def test_optimizers_match_cpu(device, make_model, optimizer, foreach):
    model, make_input = make_model()
    optimizer_cls, kwargs = OPTIMIZERS[optimizer]
    _train_and_compare(device, model, make_input, optimizer_cls, foreach=foreach, **kwargs)


def test_state_dict_saves_and_loads_onto_mycelya_and_cpu(device):
    model, make_input = _cnn()
    remote = model.to(device)
    # A step first, so the batch norm buffers are not their initial values.
    remote(make_input().to(device)).sum().backward()
    buffer = io.BytesIO()
    torch.save(remote.state_dict(), buffer)
    expected = {name: value.cpu() for name, value in remote.state_dict().items()}

    buffer.seek(0)
    on_cpu = torch.load(buffer, map_location="cpu")
    buffer.seek(0)
    on_mycelya = torch.load(buffer, map_location=device)
    assert set(on_cpu) == set(expected) == set(on_mycelya)
    for name, value in expected.items():
        assert on_cpu[name].device.type == "cpu"
        assert on_mycelya[name].device == device
        torch.testing.assert_close(on_cpu[name], value)
        torch.testing.assert_close(on_mycelya[name].cpu(), value)

    fresh, _ = _cnn()
    fresh = fresh.to(device)
    fresh.load_state_dict(on_cpu)
    x = make_input()
    torch.testing.assert_close(fresh.eval()(x.to(device)).cpu(), remote.eval()(x.to(device)).cpu())


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention_on_a_remote_cpu_runs_the_fused_cpu_kernel(machine, causal):
    # The machine's cpu device picks the backend CPU picks: one fused kernel
    # each way instead of the math path's bmm, softmax and friends.
    device = machine.device("cpu")
    q, k, v = (torch.randn(2, 4, 8, 16, requires_grad=True) for _ in range(3))
    expected = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    expected.sum().backward()

    remote = [t.detach().to(device).requires_grad_() for t in (q, k, v)]
    with RecordOps() as recorded:
        actual = nn.functional.scaled_dot_product_attention(*remote, is_causal=causal)
        actual.sum().backward()
    assert "_scaled_dot_product_flash_attention_for_cpu.default" in recorded.names
    assert "_scaled_dot_product_flash_attention_for_cpu_backward.default" in recorded.names
    assert "bmm.default" not in recorded.names
    torch.testing.assert_close(actual.cpu(), expected.detach())
    for name, local, r in zip("qkv", (q, k, v), remote, strict=True):
        torch.testing.assert_close(r.grad.cpu(), local.grad, msg=lambda m, n=name: f"grad of {n}: {m}")


def test_attention_keeps_the_backend_the_user_picked(machine):
    device = machine.device("cpu")
    q, k, v = (torch.randn(2, 4, 8, 16) for _ in range(3))
    with sdpa_kernel(SDPBackend.MATH), RecordOps() as recorded:
        actual = nn.functional.scaled_dot_product_attention(q.to(device), k.to(device), v.to(device))
    assert "_scaled_dot_product_flash_attention_for_cpu.default" not in recorded.names
    with sdpa_kernel(SDPBackend.MATH):
        expected = nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(actual.cpu(), expected)
