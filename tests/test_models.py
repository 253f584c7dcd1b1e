# SPDX-License-Identifier: AGPL-3.0-or-later
"""Small real models train on the machine exactly as on the CPU."""

import copy

import pytest
import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def _train_and_compare(device, model, make_input, optimizer_cls, steps=2, **optimizer_kwargs):
    reference, remote = model, copy.deepcopy(model).to(device)
    reference_optimizer = optimizer_cls(reference.parameters(), **optimizer_kwargs)
    remote_optimizer = optimizer_cls(remote.parameters(), **optimizer_kwargs)
    for _ in range(steps):
        x = make_input()
        # The mycelya device runs attention through the math path; so does the reference.
        with sdpa_kernel(SDPBackend.MATH):
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
