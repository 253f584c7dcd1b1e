# SPDX-License-Identifier: AGPL-3.0-or-later
"""torch.nn's machinery around modules on a mycelya device, against CPU.

Not the layers themselves but what users wrap them in: torch.func's
functional_call, parametrizations (weight_norm, spectral_norm, orthogonal),
gradient clipping, packed sequences, module hooks, meta-device models
materialized with to_empty, lazy modules, and tied weights. Each test builds
its module on CPU under a fixed seed, runs a deep copy of it on the device,
and compares the results, moved back to CPU, with the CPU module's own.
"""

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter
from torch.nn.utils import parametrizations
from torch.nn.utils.rnn import (
    pack_padded_sequence,
    pack_sequence,
    pad_packed_sequence,
    pad_sequence,
)


def _on(module, device):
    """A deep copy of `module` on `device`: the CPU original stays as it was."""
    return copy.deepcopy(module).to(device)


def _cpu(tree):
    """`tree` (a tensor, or a list, tuple or dict of them) detached and on CPU."""
    if isinstance(tree, torch.Tensor):
        # A copy even of a CPU tensor: a snapshot that later in-place updates leave alone.
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {k: _cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_cpu(v) for v in tree)
    return tree


def _mlp():
    """A small MLP with two Linear layers (and a bias each)."""
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def _forward_backward(module, x, device):
    """The output of a copy of `module` on `device` for `x`, then the gradients
    of `x` and of the parameters (by name) after a backward of a fixed
    weighting of the output; all on CPU. The weighting is not uniform so that
    a permuted or misplaced gradient shows."""
    module = _on(module, device)
    x = x.detach().to(device).requires_grad_()
    output = module(x)
    weights = torch.linspace(-1, 2, output.numel()).reshape(output.shape).to(device)
    (output * weights).sum().backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    return _cpu(output), _cpu(x.grad), _cpu(grads)


# --- torch.func.functional_call ---------------------------------------------


def test_functional_call_with_replaced_parameters_matches_cpu(device):
    model = _mlp()
    replaced = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    x = torch.randn(5, 4)

    def run(on):
        module = _on(model, on)
        params = {name: p.to(on).requires_grad_() for name, p in replaced.items()}
        inputs = x.to(on).requires_grad_()
        output = functional_call(module, params, (inputs,))
        grads = torch.autograd.grad(output.pow(2).sum(), [inputs, *params.values()])
        # functional_call must not have left the replacements in the module.
        own = module(inputs)
        return _cpu(output), _cpu(grads), _cpu(own)

    output, grads, own = run(device)
    expected_output, expected_grads, expected_own = run("cpu")
    torch.testing.assert_close(output, expected_output)
    torch.testing.assert_close(grads, expected_grads)
    torch.testing.assert_close(own, expected_own)
    # The replacements were used: the module's own parameters give other outputs.
    assert not torch.allclose(output, own)


# --- parametrizations -------------------------------------------------------


def test_weight_norm_matches_cpu(device):
    module = parametrizations.weight_norm(nn.Linear(4, 3))
    original0 = module.parametrizations.weight.original0
    assert original0.shape == (3, 1)
    x = torch.randn(5, 4)
    output, x_grad, grads = _forward_backward(module, x, device)
    expected_output, expected_x_grad, expected_grads = _forward_backward(module, x, "cpu")
    torch.testing.assert_close(output, expected_output)
    torch.testing.assert_close(x_grad, expected_x_grad)
    assert set(grads) == {
        "bias",
        "parametrizations.weight.original0",
        "parametrizations.weight.original1",
    }
    torch.testing.assert_close(grads, expected_grads)


def _spectral_state(module):
    """The power iteration's vectors u and v of a spectral_norm'd module, on CPU."""
    parametrization = module.parametrizations.weight[0]
    return _cpu([parametrization._u, parametrization._v])


def test_spectral_norm_matches_cpu_in_train_and_eval(device):
    # u and v are drawn at registration: register once, on CPU, and copy.
    module = parametrizations.spectral_norm(nn.Linear(5, 4))
    on_device = _on(module, device)
    torch.testing.assert_close(_spectral_state(on_device), _spectral_state(module))
    on_cpu = copy.deepcopy(module)
    x = torch.randn(3, 5)
    initial = _spectral_state(on_cpu)
    for step in range(2):
        # In train mode each forward runs a power iteration step, in place.
        # Registration ran 15 of them already, so u would barely move: change
        # the weight first, as an optimizer step would.
        delta = torch.randn(4, 5)
        outputs = []
        for side, on in ((on_device, device), (on_cpu, "cpu")):
            with torch.no_grad():
                side.parametrizations.weight.original.add_(delta.to(on))
            side.zero_grad()
            output = side(x.to(on))
            output.pow(2).sum().backward()
            outputs.append((_cpu(output), _cpu({n: p.grad for n, p in side.named_parameters()})))
        torch.testing.assert_close(outputs[0], outputs[1], msg=lambda m, step=step: f"step {step}: {m}")
        torch.testing.assert_close(_spectral_state(on_device), _spectral_state(on_cpu))
    assert not torch.allclose(_spectral_state(on_cpu)[0], initial[0]), "train mode left u as it was"
    # In eval mode u and v stay put.
    on_device.eval()
    on_cpu.eval()
    frozen = _spectral_state(on_cpu)
    torch.testing.assert_close(_cpu(on_device(x.to(device))), on_cpu(x).detach())
    torch.testing.assert_close(_spectral_state(on_device), frozen)
    torch.testing.assert_close(_spectral_state(on_cpu), frozen)
    # The normalized weight's largest singular value is 1, near enough after
    # a power iteration step per change of the weight.
    sigma = torch.linalg.matrix_norm(_cpu(on_device.weight), ord=2)
    assert abs(sigma.item() - 1) < 0.2, sigma


@pytest.mark.parametrize("shape", [(5, 5), (5, 3)], ids=["square", "non-square"])
def test_orthogonal_matches_cpu(device, shape):
    in_features, out_features = shape
    module = parametrizations.orthogonal(nn.Linear(in_features, out_features))
    x = torch.randn(4, in_features)
    output, x_grad, grads = _forward_backward(module, x, device)
    expected_output, expected_x_grad, expected_grads = _forward_backward(module, x, "cpu")
    torch.testing.assert_close(output, expected_output)
    torch.testing.assert_close(x_grad, expected_x_grad)
    assert "parametrizations.weight.original" in grads
    torch.testing.assert_close(grads, expected_grads)
    # The weight's rows are orthonormal on the device too.
    weight = _cpu(_on(module, device).weight)
    torch.testing.assert_close(weight @ weight.T, torch.eye(out_features), atol=1e-5, rtol=0)


# --- gradient clipping ------------------------------------------------------


def _grads_after_backward(model, x, on):
    """A copy of `model` on `on` after a backward of its output's square sum for `x`."""
    module = _on(model, on)
    module(x.to(on)).pow(2).sum().backward()
    return module


@pytest.mark.parametrize("norm_type", [2.0, math.inf], ids=["l2", "inf"])
@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "for-loop"])
def test_clip_grad_norm_matches_cpu(device, foreach, norm_type):
    model = _mlp()
    x = torch.randn(8, 4)
    max_norm = 0.5

    def clip(on):
        module = _grads_after_backward(model, x, on)
        total = nn.utils.clip_grad_norm_(module.parameters(), max_norm, norm_type=norm_type, foreach=foreach)
        return _cpu(total), _cpu([p.grad for p in module.parameters()])

    total, grads = clip(device)
    expected_total, expected_grads = clip("cpu")
    torch.testing.assert_close(total, expected_total)
    # Otherwise nothing was clipped and the grads would match unclipped.
    assert total.item() > max_norm
    torch.testing.assert_close(grads, expected_grads)
    clipped_norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]), norm_type)
    torch.testing.assert_close(clipped_norm, torch.tensor(max_norm), atol=1e-4, rtol=0)


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "for-loop"])
def test_clip_grad_value_matches_cpu(device, foreach):
    model = _mlp()
    x = torch.randn(8, 4)
    clip_value = 0.1

    def clip(on):
        module = _grads_after_backward(model, x, on)
        nn.utils.clip_grad_value_(module.parameters(), clip_value, foreach=foreach)
        return _cpu([p.grad for p in module.parameters()])

    grads = clip(device)
    torch.testing.assert_close(grads, clip("cpu"))
    assert max(g.abs().max().item() for g in grads) == pytest.approx(clip_value)


# --- packed sequences -------------------------------------------------------


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch first", "time first"])
@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
def test_pack_padded_round_trip_matches_cpu(device, enforce_sorted, batch_first):
    lengths = torch.tensor([5, 3, 2] if enforce_sorted else [2, 5, 3])
    padded = torch.randn((3, 5, 2) if batch_first else (5, 3, 2))

    def round_trip(on):
        x = padded.to(on).requires_grad_()
        packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
        unpacked, out_lengths = pad_packed_sequence(packed, batch_first=batch_first, padding_value=-2.0)
        weights = torch.arange(packed.data.numel(), dtype=torch.float32).reshape(packed.data.shape)
        (packed.data * weights.to(on)).sum().backward()
        indices = [packed.sorted_indices, packed.unsorted_indices]
        return _cpu([packed.data, unpacked, x.grad]), packed.batch_sizes, out_lengths, _cpu(indices)

    (data, unpacked, grad), batch_sizes, out_lengths, indices = round_trip(device)
    expected = round_trip("cpu")
    torch.testing.assert_close([data, unpacked, grad], expected[0])
    assert batch_sizes.tolist() == expected[1].tolist() == [3, 3, 2, 1, 1]
    assert out_lengths.tolist() == lengths.tolist()
    if enforce_sorted:
        assert indices == [None, None]
    else:
        torch.testing.assert_close(indices, expected[3])
    # The padding past each length is the padding value.
    mask = torch.arange(5)[None, :] >= lengths[:, None]
    assert (unpacked if batch_first else unpacked.transpose(0, 1))[mask].eq(-2.0).all()


def test_pack_sequence_and_pad_sequence_match_cpu(device):
    sequences = [torch.randn(n, 3) for n in (2, 4, 1)]

    def run(on):
        moved = [s.to(on).requires_grad_() for s in sequences]
        padded = pad_sequence(moved, batch_first=True, padding_value=-1.0)
        packed = pack_sequence(moved, enforce_sorted=False)
        weights = torch.linspace(0, 1, packed.data.numel()).reshape(packed.data.shape).to(on)
        (packed.data * weights).sum().backward()
        return _cpu([padded, packed.data, packed.sorted_indices, *(s.grad for s in moved)])

    result = run(device)
    torch.testing.assert_close(result, run("cpu"))
    assert result[0].shape == (3, 4, 3)
    assert result[0][2, 1:].eq(-1.0).all()


@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
def test_lstm_over_packed_batch_first_input_matches_cpu(device, enforce_sorted):
    lstm = nn.LSTM(3, 4, batch_first=True)
    lengths = torch.tensor([4, 3, 1] if enforce_sorted else [3, 4, 1])
    padded = torch.randn(3, 4, 3)

    def run(on):
        module = _on(lstm, on)
        x = padded.to(on).requires_grad_()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=enforce_sorted)
        output, (h, c) = module(packed)
        unpacked, _ = pad_packed_sequence(output, batch_first=True)
        (unpacked.pow(2).sum() + h.sum() + 2 * c.sum()).backward()
        return _cpu([unpacked, h, c, x.grad, *(p.grad for p in module.parameters())])

    result = run(device)
    torch.testing.assert_close(result, run("cpu"))
    # Steps past a sequence's length give no gradient to its input.
    assert result[3][2, 1:].eq(0).all()


# --- hooks ------------------------------------------------------------------


def test_forward_and_backward_hooks_record_and_modify_as_on_cpu(device):
    model = _mlp()
    x = torch.randn(5, 4)

    def run(on):
        module = _on(model, on)
        first, last = module[0], module[2]
        seen = {"pre": [], "forward": [], "backward_pre": [], "backward": []}

        def forward_pre_hook(_, args):
            seen["pre"].append(args[0].detach().clone())
            return (args[0] * 2,)

        def forward_hook(_, args, output):
            seen["forward"].append(output.detach().clone())
            return output * 0.5

        def backward_pre_hook(_, grad_output):
            seen["backward_pre"].append(grad_output[0].clone())
            return (grad_output[0] * 3,)

        def backward_hook(_, grad_input, grad_output):
            seen["backward"].append([grad_input[0].clone(), grad_output[0].clone()])
            return (grad_input[0] * -1,)

        first.register_forward_pre_hook(forward_pre_hook)
        last.register_forward_hook(forward_hook)
        last.register_full_backward_pre_hook(backward_pre_hook)
        first.register_full_backward_hook(backward_hook)
        inputs = x.to(on).requires_grad_()
        output = module(inputs)
        weights = torch.linspace(-1, 1, output.numel()).reshape(output.shape).to(on)
        (output * weights).sum().backward()
        grads = [inputs.grad, *(p.grad for p in module.parameters())]
        return _cpu(output), _cpu(grads), _cpu(seen)

    output, grads, seen = run(device)
    expected_output, expected_grads, expected_seen = run("cpu")
    assert {k: len(v) for k, v in seen.items()} == {"pre": 1, "forward": 1, "backward_pre": 1, "backward": 1}
    torch.testing.assert_close(seen, expected_seen)
    torch.testing.assert_close(output, expected_output)
    torch.testing.assert_close(grads, expected_grads)
    # The hooks took effect: the forward hook halved the output it saw, and
    # the backward hook negated the gradient of the first layer's input, which
    # the pre-hook had doubled: x's gradient is -2 times what that hook saw.
    torch.testing.assert_close(output, seen["forward"][0] * 0.5)
    torch.testing.assert_close(grads[0], -2 * seen["backward"][0][0])


# --- to_empty from the meta device ------------------------------------------


class _Net(nn.Module):
    """A Linear, a BatchNorm1d (parameters and buffers) and another Linear."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.norm = nn.BatchNorm1d(6)
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


def _train_step(module, x, on):
    """One forward and backward of `module` (already on `on`) in train mode:
    its output, parameter grads and buffers (updated running stats), on CPU."""
    output = module(x.to(on))
    output.pow(2).sum().backward()
    return _cpu([output, *(p.grad for p in module.parameters()), *module.buffers()])


def _empty_on(device):
    """A _Net built on the meta device, then given uninitialized storage on `device`."""
    with torch.device("meta"):
        module = _Net()
    assert all(p.is_meta for p in module.parameters())
    module.to_empty(device=device)
    assert all(t.device == device for t in [*module.parameters(), *module.buffers()])
    return module


def test_to_empty_then_assign_a_device_state_dict_matches_cpu(device):
    reference = _Net()
    module = _empty_on(device)
    state = {name: t.to(device) for name, t in reference.state_dict().items()}
    module.load_state_dict(state, assign=True)
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        assert t.device == device, name
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in module.parameters())
    x = torch.randn(5, 4)
    torch.testing.assert_close(_train_step(module, x, device), _train_step(reference, x, "cpu"))


def test_to_empty_then_load_a_cpu_state_dict_copies_into_device_tensors(device):
    reference = _Net()
    module = _empty_on(device)
    before = dict(module.named_parameters())
    module.load_state_dict(reference.state_dict())
    # Without assign the values are copied into the device's own parameters.
    for name, p in module.named_parameters():
        assert p is before[name], name
        assert p.device == device, name
    torch.testing.assert_close(_cpu(module.state_dict()), reference.state_dict())
    x = torch.randn(5, 4)
    torch.testing.assert_close(_train_step(module, x, device), _train_step(reference, x, "cpu"))


# --- lazy modules -----------------------------------------------------------

# name: (factory taking nn's factory kwargs, input shape, the class it becomes).
LAZY = {
    "LazyLinear": (lambda **kw: nn.LazyLinear(3, **kw), (2, 4), nn.Linear),
    "LazyConv1d": (lambda **kw: nn.LazyConv1d(2, 3, padding=1, **kw), (2, 3, 7), nn.Conv1d),
    "LazyConv2d": (lambda **kw: nn.LazyConv2d(4, 3, **kw), (2, 3, 6, 6), nn.Conv2d),
    "LazyConvTranspose2d": (
        lambda **kw: nn.LazyConvTranspose2d(2, 3, stride=2, **kw),
        (1, 3, 4, 4),
        nn.ConvTranspose2d,
    ),
    "LazyBatchNorm1d": (lambda **kw: nn.LazyBatchNorm1d(**kw), (4, 5), nn.BatchNorm1d),
    "LazyInstanceNorm2d": (
        lambda **kw: nn.LazyInstanceNorm2d(affine=True, track_running_stats=True, **kw),
        (2, 3, 4, 4),
        nn.InstanceNorm2d,
    ),
}


def _assert_uninitialized(module, device):
    """Every parameter of `module` is an UninitializedParameter on `device` and
    every buffer but a norm's step count an UninitializedBuffer there."""
    params = dict(module.named_parameters())
    assert params, "no parameters"
    for name, p in params.items():
        assert isinstance(p, UninitializedParameter), (name, type(p))
        assert p.device == device, (name, p.device)
    for name, b in module.named_buffers():
        if name == "num_batches_tracked":
            continue
        assert isinstance(b, UninitializedBuffer), (name, type(b))
        assert b.device == device, (name, b.device)


@pytest.mark.parametrize("name", LAZY)
def test_lazy_module_moved_before_first_call_stays_uninitialized(device, name):
    factory, _, _ = LAZY[name]
    module = factory().to(device)
    _assert_uninitialized(module, torch.device(device))
    assert module.has_uninitialized_params()


@pytest.mark.parametrize("name", LAZY)
def test_lazy_module_created_on_the_device_is_uninitialized_there(device, name):
    factory, _, _ = LAZY[name]
    _assert_uninitialized(factory(device=device), torch.device(device))


def _first_call(module, shape, on):
    """`module`'s first forward (on `on`) for a fixed input of `shape`, after a
    fixed seed so that the parameters it materializes draw the same numbers on
    every side, then a backward: the output and the input's gradient on CPU."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3)).to(on).requires_grad_()
    torch.manual_seed(21)
    output = module(x)
    weights = torch.linspace(-1, 1, output.numel()).reshape(output.shape).to(on)
    (output * weights).sum().backward()
    return _cpu(output), _cpu(x.grad)


@pytest.mark.parametrize("name", LAZY)
def test_lazy_module_first_forward_materializes_like_cpu(device, name):
    factory, shape, becomes = LAZY[name]
    on_device = factory().to(device)
    on_cpu = factory()
    result = _first_call(on_device, shape, device)
    expected = _first_call(on_cpu, shape, "cpu")
    assert type(on_device) is becomes
    for (param_name, p), expected_p in zip(on_device.named_parameters(), on_cpu.parameters(), strict=True):
        assert type(p) is nn.Parameter, (param_name, type(p))
        assert p.device == torch.device(device), param_name
        assert p.shape == expected_p.shape, param_name
    # The test providers' devices are cpu devices (mock's, and the CPU behind
    # runpod's fake): their draws under a seed are CPU's own, so
    # reset_parameters gave both sides the same weights.
    torch.testing.assert_close(_cpu(on_device.state_dict()), on_cpu.state_dict())
    torch.testing.assert_close(result, expected)
    grads = [p.grad for p in on_device.parameters()]
    torch.testing.assert_close(_cpu(grads), [p.grad for p in on_cpu.parameters()])


@pytest.mark.parametrize("name", ["LazyLinear", "LazyConv2d", "LazyBatchNorm1d"])
def test_lazy_state_dict_loads_into_an_uninitialized_device_module(device, name):
    factory, shape, becomes = LAZY[name]
    on_device = factory().to(device)
    state = on_device.state_dict()
    assert any(isinstance(t, UninitializedParameter) for t in state.values()), state
    on_cpu = factory()
    _first_call(on_cpu, shape, "cpu")
    on_cpu.zero_grad()
    on_device.load_state_dict(on_cpu.state_dict())
    assert not on_device.has_uninitialized_params()
    for param_name, p in on_device.named_parameters():
        assert type(p) is nn.Parameter, (param_name, type(p))
        assert p.device == torch.device(device), param_name
    torch.testing.assert_close(_cpu(on_device.state_dict()), on_cpu.state_dict())
    # Its first forward keeps the loaded values and turns it into `becomes`.
    result = _first_call(on_device, shape, device)
    assert type(on_device) is becomes
    torch.testing.assert_close(result, _first_call(on_cpu, shape, "cpu"))


@pytest.mark.parametrize("name", ["LazyLinear", "LazyConvTranspose2d", "LazyBatchNorm1d"])
def test_lazy_module_survives_a_round_trip_while_uninitialized(device, name):
    factory, shape, becomes = LAZY[name]
    module = factory().to(device).cpu()
    _assert_uninitialized(module, torch.device("cpu"))
    # It still materializes on its first call, as one that never moved.
    result = _first_call(module, shape, "cpu")
    never_moved = factory()
    torch.testing.assert_close(result, _first_call(never_moved, shape, "cpu"))
    assert type(module) is becomes
    torch.testing.assert_close(module.state_dict(), never_moved.state_dict())


# --- tied weights and optimizers --------------------------------------------


class _TiedModel(nn.Module):
    """An Embedding and a Linear decoder that share one weight, as in language models."""

    def __init__(self, tokens=10, size=6):
        super().__init__()
        self.encoder = nn.Embedding(tokens, size)
        self.hidden = nn.Linear(size, size)
        self.decoder = nn.Linear(size, tokens)
        self.decoder.weight = self.encoder.weight

    def forward(self, tokens):
        return self.decoder(torch.tanh(self.hidden(self.encoder(tokens))))


def test_tied_weights_stay_tied_after_moving(device):
    reference = _TiedModel()
    count = len(list(reference.parameters()))
    model = _on(reference, device)
    assert model.decoder.weight is model.encoder.weight
    assert len(list(model.parameters())) == count
    tokens = torch.tensor([[1, 4, 4], [9, 0, 2]])

    def step(module, on):
        module(tokens.to(on)).pow(2).sum().backward()
        return _cpu([p.grad for p in module.parameters()])

    # The shared weight's gradient sums the encoder's and the decoder's.
    torch.testing.assert_close(step(model, device), step(reference, "cpu"))
    # A step through one name moves the other.
    with torch.no_grad():
        model.encoder.weight.add_(1.0)
    torch.testing.assert_close(_cpu(model.decoder.weight), reference.decoder.weight.detach() + 1)


def test_optimizer_created_before_moving_updates_the_model(device):
    reference = _TiedModel()
    model = copy.deepcopy(reference)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    expected_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    params = list(model.parameters())
    model.to(device)
    # Module.to kept the parameter objects, so the optimizer still holds them.
    assert all(p is q for p, q in zip(model.parameters(), params, strict=True))
    assert all(p.device == torch.device(device) for p in optimizer.param_groups[0]["params"])
    tokens = torch.tensor([[3, 1], [7, 7]])
    initial = _cpu(list(model.parameters()))
    for _ in range(2):
        for module, opt, on in ((model, optimizer, device), (reference, expected_optimizer, "cpu")):
            opt.zero_grad()
            module(tokens.to(on)).pow(2).sum().backward()
            opt.step()
    torch.testing.assert_close(_cpu(list(model.parameters())), _cpu(list(reference.parameters())))
    assert not torch.allclose(_cpu(model.hidden.weight), initial[1]), "the optimizer changed nothing"
    momentum = [optimizer.state[p]["momentum_buffer"] for p in model.parameters()]
    expected_momentum = [expected_optimizer.state[p]["momentum_buffer"] for p in reference.parameters()]
    torch.testing.assert_close(_cpu(momentum), expected_momentum)
