# SPDX-License-Identifier: AGPL-3.0-or-later
"""Random ops run on the machine (no data crosses the wire) and are
reproducible under torch.manual_seed and torch.mycelya.manual_seed; their
state saves and restores (fork_rng, checkpointing)."""

import pytest
import torch

from conftest import PROVIDER

# Saving a machine's generator state needs generators of its own: mock's are
# this process's (see test_rng_state_on_mock_says_it_is_the_process_generator).
own_generators = pytest.mark.skipif(PROVIDER == "mock", reason="mock shares this process's generators")


def _draw(device):
    return [
        torch.randn(64, device=device),
        torch.rand(3, 4, device=device),
        torch.randint(0, 100, (10,), device=device),
        torch.nn.functional.dropout(torch.ones(200, device=device), p=0.5),
        torch.empty(50, device=device).normal_(2.0, 3.0),
        torch.bernoulli(torch.full((30,), 0.3, device=device)),
        torch.randperm(20, device=device),
    ]


@pytest.mark.parametrize(
    "seed_fn", [torch.manual_seed, lambda s: torch.mycelya.manual_seed(s)], ids=["torch", "mycelya"]
)
def test_seeding_makes_remote_random_ops_reproducible(device, seed_fn):
    seed_fn(42)
    first = [t.cpu() for t in _draw(device)]
    seed_fn(42)
    second = [t.cpu() for t in _draw(device)]
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    seed_fn(43)
    third = torch.randn(64, device=device).cpu()
    assert not torch.equal(third, first[0])


def test_random_tensors_are_made_remotely_without_round_trips(machine, device):
    torch.manual_seed(0)
    machine.synchronize()
    round_trips, uploaded = machine.round_trips, machine.bytes_uploaded
    x = torch.randn(512, 512, device=device)
    mask = torch.nn.functional.dropout(torch.ones(512, 512, device=device), p=0.25)
    y = x * mask
    torch.rand(1000, device=device)
    assert machine.round_trips == round_trips, "making random tensors waited for the machine"
    assert machine.bytes_uploaded == uploaded, "random tensors were made locally and uploaded"
    assert y.shape == (512, 512)
    machine.synchronize()


def test_dropout_statistics_and_scaling(device):
    torch.manual_seed(7)
    out = torch.nn.functional.dropout(torch.ones(100_000, device=device), p=0.2).cpu()
    kept = out != 0
    # Kept elements are scaled by 1 / (1 - p); about 80% are kept.
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1.25))
    assert 0.79 < kept.float().mean().item() < 0.81


def test_distributions_look_right(device):
    torch.manual_seed(3)
    normal = torch.randn(200_000, device=device)
    uniform = torch.rand(200_000, device=device)
    assert abs(normal.mean().item()) < 0.02 and abs(normal.std().item() - 1) < 0.02
    assert 0 <= uniform.min().item() and uniform.max().item() < 1
    assert abs(uniform.mean().item() - 0.5) < 0.01


def test_rng_state_on_mock_says_it_is_the_process_generator(device):
    if PROVIDER != "mock":
        pytest.skip("mock only: its executor draws from this process's CPU generator")
    with pytest.raises(NotImplementedError, match="CPU generator"):
        torch.mycelya.get_rng_state(device)
    with pytest.raises(NotImplementedError, match="preserve_rng_state=False"):
        torch.mycelya.set_rng_state(torch.zeros(8, dtype=torch.uint8), device)


def test_seeding_does_not_repeat_cpu_draws(machine, device):
    # On mock the machine's generator is this process's CPU one: seeding must
    # not be applied again later, when queued ops run.
    torch.ones(1, device=device)
    torch.manual_seed(0)
    first = torch.rand(5)
    machine.synchronize()
    assert not torch.equal(torch.rand(5), first)
    torch.manual_seed(0)
    x = torch.randn(4, device=device)
    torch.manual_seed(0)
    torch.testing.assert_close(torch.randn(4, device=device).cpu(), x.cpu(), rtol=0, atol=0)


@own_generators
def test_rng_state_round_trips(device):
    torch.manual_seed(11)
    state = torch.mycelya.get_rng_state(device)
    assert state.dtype == torch.uint8 and state.device.type == "cpu" and state.numel() > 0
    first = torch.randn(100, device=device).cpu()
    torch.mycelya.set_rng_state(state, device)
    torch.testing.assert_close(torch.randn(100, device=device).cpu(), first, rtol=0, atol=0)
    with pytest.raises(ValueError, match="uint8"):
        torch.mycelya.set_rng_state(torch.zeros(3), device)


@own_generators
def test_fork_rng_restores_the_remote_stream(device):
    torch.manual_seed(5)
    with torch.random.fork_rng(devices=[device], device_type="mycelya"):
        inside = torch.rand(50, device=device).cpu()
    after = torch.rand(50, device=device).cpu()
    torch.testing.assert_close(after, inside, rtol=0, atol=0)


@own_generators
def test_checkpoint_with_dropout_replays_the_same_mask(device):
    from torch.utils.checkpoint import checkpoint

    layer = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.Tanh()).to(device)
    x = torch.randn(4, 8, device=device)
    grads = []
    for use_checkpoint in (False, True):
        torch.manual_seed(21)
        layer.zero_grad()
        out = checkpoint(layer, x, use_reentrant=False) if use_checkpoint else layer(x)
        out.sum().backward()
        grads.append(layer[0].weight.grad.cpu())
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)
