# SPDX-License-Identifier: AGPL-3.0-or-later
"""Random ops run on the machine (no data crosses the wire), drawing from
generators of the machine's session. Every public entry point reaches them
one way: torch.manual_seed and torch.mycelya.manual_seed_all seed every
device, torch.mycelya.manual_seed / get_rng_state / set_rng_state act on one
device's default generator, and torch.Generator(device=...) makes more."""

import pytest
import torch

import mycelya_torch
from conftest import PROVIDER


def _draw(device, generator=None):
    kwargs = {} if generator is None else {"generator": generator}
    return [
        torch.randn(64, device=device, **kwargs),
        torch.rand(3, 4, device=device, **kwargs),
        torch.randint(0, 100, (10,), device=device, **kwargs),
        torch.empty(50, device=device).normal_(2.0, 3.0, **kwargs),
        torch.bernoulli(torch.full((30,), 0.3, device=device), **kwargs),
        torch.randperm(20, device=device, **kwargs),
    ]


def _dropout(device):
    return torch.nn.functional.dropout(torch.ones(200, device=device), p=0.5)


def _assert_same(first, second):
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=0, atol=0)


@pytest.mark.parametrize(
    "seed_fn",
    [torch.manual_seed, torch.mycelya.manual_seed, torch.mycelya.manual_seed_all],
    ids=["torch", "mycelya", "mycelya_all"],
)
def test_seeding_makes_remote_random_ops_reproducible(device, seed_fn):
    with torch.mycelya.device(device):
        seed_fn(42)
        first = [t.cpu() for t in [*_draw(device), _dropout(device)]]
        seed_fn(42)
        _assert_same([*_draw(device), _dropout(device)], first)
        seed_fn(43)
        assert not torch.equal(torch.randn(64, device=device).cpu(), first[0])


def test_streams_match_a_cpu_generator_seeded_alike(machine):
    # The machine's CPU generator is PyTorch's, so the same seed gives the CPU's numbers.
    device = machine.device("cpu")
    torch.manual_seed(7)
    remote = [*_draw(device), _dropout(device)]
    torch.manual_seed(7)
    local = [*_draw("cpu"), _dropout("cpu")]
    _assert_same(remote, local)


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


def test_remote_draws_leave_the_local_cpu_stream_alone(machine, device):
    torch.manual_seed(0)
    expected = torch.rand(5)
    torch.manual_seed(0)
    torch.randn(1000, device=device)
    machine.synchronize()
    torch.testing.assert_close(torch.rand(5), expected, rtol=0, atol=0)


def test_rng_state_round_trips(device):
    torch.manual_seed(11)
    state = torch.mycelya.get_rng_state(device)
    assert state.dtype == torch.uint8 and state.device.type == "cpu" and state.numel() > 0
    assert torch.equal(state, torch.mycelya.default_generator(device).get_state())
    first = torch.randn(100, device=device).cpu()
    torch.mycelya.set_rng_state(state, device)
    torch.testing.assert_close(torch.randn(100, device=device).cpu(), first, rtol=0, atol=0)
    with pytest.raises(ValueError, match="uint8"):
        torch.mycelya.set_rng_state(torch.zeros(3), device)


def test_fork_rng_restores_the_remote_stream(device):
    torch.manual_seed(5)
    with torch.random.fork_rng(devices=[device], device_type="mycelya"):
        inside = torch.rand(50, device=device).cpu()
    after = torch.rand(50, device=device).cpu()
    torch.testing.assert_close(after, inside, rtol=0, atol=0)


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


def test_a_generator_of_its_own(device):
    generator = torch.Generator(device=device)
    assert generator.device == device
    assert generator.initial_seed() == 67280421310721  # PyTorch's default
    generator.manual_seed(3)
    torch.manual_seed(99)
    mine = _draw(device, generator)
    # The same as a CPU generator seeded alike, whatever the device's default does.
    _assert_same(mine, _draw("cpu", torch.Generator().manual_seed(3)))
    # Its state saves and restores, and seeding it leaves the default alone.
    state = generator.get_state()
    again = torch.randn(8, device=device, generator=generator).cpu()
    generator.set_state(state)
    torch.testing.assert_close(
        torch.randn(8, device=device, generator=generator).cpu(), again, rtol=0, atol=0
    )
    torch.manual_seed(99)
    expected = torch.randn(8, device=device).cpu()
    torch.manual_seed(99)
    generator.manual_seed(4)
    torch.testing.assert_close(torch.randn(8, device=device).cpu(), expected, rtol=0, atol=0)
    # initial_seed after set_state asks the machine.
    generator.set_state(state)
    assert generator.initial_seed() == 3
    clone = generator.clone_state()
    torch.testing.assert_close(
        torch.randn(4, device=device, generator=clone).cpu(),
        torch.randn(4, device=device, generator=generator).cpu(),
        rtol=0,
        atol=0,
    )


def test_unsupported_generator_features_say_so(device):
    generator = torch.Generator(device=device)
    with pytest.raises(NotImplementedError, match="offsets"):
        generator.set_offset(4)
    with pytest.raises(NotImplementedError, match="offsets"):
        generator.get_offset()
    with pytest.raises(RuntimeError, match="mycelya generator"):
        torch.randn(3, device=device, generator=torch.Generator())


def test_seeding_one_device_leaves_the_machines_other_devices_alone():
    with mycelya_torch.RemoteMachine(PROVIDER, "T4", gpu_count=2) as machine:
        devices = (
            [torch.device(machine.device("cuda", i)) for i in range(2)] if len(machine.devices()) > 2 else []
        )
        if not devices:
            pytest.skip(f"{PROVIDER} serves only {machine.devices()} here")
        devices.append(machine.device("cpu"))
        torch.manual_seed(1)
        expected = [torch.randn(8, device=d).cpu() for d in devices]
        torch.manual_seed(1)
        torch.mycelya.default_generator(devices[0]).manual_seed(2)  # only cuda:0
        with torch.mycelya.device(devices[1]):
            torch.mycelya.manual_seed(3)  # only the current device, cuda:1
        drawn = [torch.randn(8, device=d).cpu() for d in devices]
        assert not torch.equal(drawn[0], expected[0])
        assert not torch.equal(drawn[1], expected[1])
        torch.testing.assert_close(drawn[2], expected[2], rtol=0, atol=0)
        # A generator of one device cannot drive an op on another.
        with pytest.raises(RuntimeError, match="cannot be used for an op on"):
            torch.randn(3, device=devices[1], generator=torch.mycelya.default_generator(devices[0]))


def test_a_machine_started_after_seeding_follows_the_seed():
    torch.manual_seed(123)
    with mycelya_torch.RemoteMachine(PROVIDER) as first:
        a = torch.randn(16, device=first.device("cpu")).cpu()
    torch.manual_seed(123)
    with mycelya_torch.RemoteMachine(PROVIDER) as second:
        b = torch.randn(16, device=second.device("cpu")).cpu()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.manual_seed(123)
    torch.testing.assert_close(a, torch.randn(16), rtol=0, atol=0)


def test_a_generator_of_a_stopped_machine_never_reaches_its_restart():
    machine = mycelya_torch.RemoteMachine(PROVIDER)
    generator = torch.Generator(device=machine.device())
    generator.manual_seed(1)
    machine.stop()
    machine.start()
    try:
        for use in (lambda: generator.manual_seed(2), generator.get_state, generator.seed):
            with pytest.raises(RuntimeError, match="not running"):
                use()
        assert machine.memory_stats()["generators"] == 0
    finally:
        machine.stop()
