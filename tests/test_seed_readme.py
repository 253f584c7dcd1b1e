# SPDX-License-Identifier: AGPL-3.0-or-later
"""The seed README's examples, run on the test provider and checked against CPU."""

import torch
import torch.nn as nn

import mycelya_torch
from conftest import PROVIDER


def test_quick_start():
    machine = mycelya_torch.RemoteMachine(PROVIDER, "A100-40GB")
    x = torch.randn(1000, 1000, device=machine.device())
    y = torch.randn(1000, 1000, device=machine.device())
    assert x.shape == (1000, 1000) and y.shape == (1000, 1000)
    result = x @ y
    assert result.shape == (1000, 1000)
    result_cpu = result.cpu()
    assert result_cpu.device.type == "cpu"
    torch.testing.assert_close(result_cpu, x.cpu() @ y.cpu())
    machine.stop()


def _synthetic_dataloader(batches=4, batch_size=16):
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(batch_size, 784, generator=generator),
            torch.randint(0, 10, (batch_size,), generator=generator),
        )
        for _ in range(batches)
    ]


def test_neural_network_training_matches_cpu():
    machine = mycelya_torch.RemoteMachine(PROVIDER, "A100-40GB")
    device = machine.device()

    torch.manual_seed(0)
    reference = nn.Linear(784, 10)
    model = nn.Linear(784, 10)
    model.load_state_dict(reference.state_dict())
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters())
    reference_optimizer = torch.optim.Adam(reference.parameters())

    for data, target in _synthetic_dataloader():
        remote_data, remote_target = data.to(device), target.to(device)
        assert remote_data.shape == (16, 784) and remote_target.shape == (16,)

        optimizer.zero_grad()
        output = model(remote_data)
        loss = nn.functional.cross_entropy(output, remote_target)
        loss.backward()

        reference_optimizer.zero_grad()
        reference_loss = nn.functional.cross_entropy(reference(data), target)
        reference_loss.backward()

        torch.testing.assert_close(loss.cpu(), reference_loss.detach())
        torch.testing.assert_close(model.weight.grad.cpu(), reference.weight.grad)
        torch.testing.assert_close(model.bias.grad.cpu(), reference.bias.grad)
        optimizer.step()
        reference_optimizer.step()

    torch.testing.assert_close(model.weight.cpu(), reference.weight.detach())
    torch.testing.assert_close(model.bias.cpu(), reference.bias.detach())
    machine.stop()


def test_mixed_local_remote_operations():
    machine = mycelya_torch.RemoteMachine(PROVIDER, "T4")
    device = machine.device()
    local_tensor = torch.randn(100, 100)
    remote_tensor = torch.randn(100, 100, device=device)

    result = local_tensor @ remote_tensor.cpu()
    assert result.device.type == "cpu"

    local_on_remote = local_tensor.to(device)
    remote_result = local_on_remote @ remote_tensor
    assert remote_result.device == device
    torch.testing.assert_close(remote_result.cpu(), result)
    machine.stop()


def test_mock_provider_for_development():
    machine = mycelya_torch.RemoteMachine("mock")
    device = machine.device()
    x = torch.randn(100, 100, device=device)
    result = x @ x.T
    assert result.shape == (100, 100)
    x_cpu = x.cpu()
    torch.testing.assert_close(result.cpu(), x_cpu @ x_cpu.T)
    machine.stop()
