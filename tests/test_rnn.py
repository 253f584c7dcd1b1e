# SPDX-License-Identifier: AGPL-3.0-or-later
"""nn.LSTM, nn.GRU, nn.RNN and their cells on a mycelya device, against CPU.

PyTorch runs LSTM and GRU cells on any device but the CPU as one fused op
each (_thnn_fused_lstm_cell, _thnn_fused_gru_cell), which it implements only
for CUDA: a machine's GPU runs CUDA's kernels, its CPU the server's stand-ins
(server/cpu_rnn_cells.cpp). Each case runs on the provider's default device
and, on mock, on a cuda device the mock emulates.
"""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import mycelya_torch
from conftest import PROVIDER


@pytest.fixture(scope="module", params=["default"] + (["emulated cuda"] if PROVIDER == "mock" else []))
def target(request, machine):
    """(machine, device) to run on."""
    if request.param == "default":
        yield machine, machine.device()
        return
    with mycelya_torch.RemoteMachine("mock", "H100") as gpu_machine:
        yield gpu_machine, gpu_machine.device("cuda")


def _tensors(tree):
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


def _run(module, inputs, device):
    """Forward and backward of `module` on `device` (copies of both): the
    outputs, then the gradients of the inputs that require them and of the
    parameters, all on CPU."""
    module = copy.deepcopy(module).to(device)
    moved = [
        x.detach().to(device).requires_grad_(x.requires_grad) if isinstance(x, torch.Tensor) else x
        for x in inputs
    ]
    outputs = _tensors(module(*moved))
    generator = torch.Generator().manual_seed(7)
    cotangents = [torch.randn(x.shape, generator=generator).to(device) for x in outputs]
    torch.autograd.backward(outputs, cotangents)
    grads = [x.grad for x in moved if isinstance(x, torch.Tensor) and x.requires_grad]
    grads += [p.grad for p in module.parameters()]
    return [x.detach().cpu() for x in outputs], [g.cpu() for g in grads]


def _assert_matches_cpu(module, inputs, device):
    expected_outputs, expected_grads = _run(module, inputs, "cpu")
    outputs, grads = _run(module, inputs, device)
    torch.testing.assert_close(outputs, expected_outputs)
    torch.testing.assert_close(grads, expected_grads)


RNN_CONFIGS = {
    "two layers": dict(num_layers=2),
    "bidirectional": dict(num_layers=2, bidirectional=True),
    "batch first": dict(batch_first=True),
    "no bias": dict(bias=False, bidirectional=True),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("config", RNN_CONFIGS, ids=list(RNN_CONFIGS))
@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN], ids=lambda kind: kind.__name__)
def test_rnn_modules_match_cpu(target, kind, config, training):
    _, device = target
    options = RNN_CONFIGS[config]
    module = kind(3, 5, **options).train(training)
    batch, steps = 2, 4
    x = torch.randn(
        (batch, steps, 3) if options.get("batch_first") else (steps, batch, 3), requires_grad=True
    )
    layers = options.get("num_layers", 1) * (2 if options.get("bidirectional") else 1)
    h0 = torch.randn(layers, batch, 5, requires_grad=True)
    state = (h0, torch.randn(layers, batch, 5, requires_grad=True)) if kind is nn.LSTM else h0
    _assert_matches_cpu(module, [x], device)
    _assert_matches_cpu(WithState(module, state), [x, *_tensors(state)], device)


class WithState(nn.Module):
    """`rnn` called with an initial state passed as inputs (an LSTM's (h0, c0) as two)."""

    def __init__(self, rnn, state):
        super().__init__()
        self.rnn = rnn
        self.is_lstm = isinstance(state, tuple)

    def forward(self, x, *state):
        return self.rnn(x, tuple(state) if self.is_lstm else state[0])


def test_lstm_with_projections_matches_cpu(target):
    _, device = target
    module = nn.LSTM(4, 6, num_layers=2, proj_size=3, bidirectional=True)
    _assert_matches_cpu(module, [torch.randn(5, 2, 4, requires_grad=True)], device)


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
@pytest.mark.parametrize("kind", [nn.LSTMCell, nn.GRUCell, nn.RNNCell], ids=lambda kind: kind.__name__)
def test_cells_match_cpu(target, kind, bias, batched):
    _, device = target
    shape = (3,) if batched else ()
    x = torch.randn(*shape, 4, requires_grad=True)
    h = torch.randn(*shape, 6, requires_grad=True)
    state = [h, torch.randn(*shape, 6, requires_grad=True)] if kind is nn.LSTMCell else [h]
    cell = kind(4, 6, bias=bias)

    class Step(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = cell

        def forward(self, x, *state):
            # Two steps: the second takes the first's state, as in a loop.
            state = self.cell(x, tuple(state) if len(state) == 2 else state[0])
            return self.cell(x, state)

    _assert_matches_cpu(Step(), [x, *state], device)


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN], ids=lambda kind: kind.__name__)
def test_packed_sequences_match_cpu(target, kind):
    _, device = target
    module = kind(3, 4, num_layers=2, bidirectional=True)
    lengths = torch.tensor([2, 5, 3])

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = module

        def forward(self, padded):
            packed = pack_padded_sequence(padded, lengths, enforce_sorted=False)
            output, state = self.rnn(packed)
            unpacked, out_lengths = pad_packed_sequence(output)
            assert out_lengths.tolist() == lengths.tolist()
            return unpacked, state

    _assert_matches_cpu(Packed(), [torch.randn(5, 3, 3, requires_grad=True)], device)


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU], ids=lambda kind: kind.__name__)
def test_dropout_between_layers_follows_the_seed(target, kind):
    _, device = target
    module = kind(3, 8, num_layers=3, dropout=0.5)
    x = torch.randn(6, 4, 3, requires_grad=True)

    def run(on):
        torch.manual_seed(11)
        return _run(module, [x], on)

    first, again = run(device), run(device)
    torch.testing.assert_close(first, again)
    no_dropout = _run(module.eval(), [x], device)
    module.train()
    assert not torch.allclose(first[0][0], no_dropout[0][0]), "dropout=0.5 changed nothing"
    if mycelya_torch._C.remote_device_name(device.index).startswith("cpu"):
        # A cpu device draws PyTorch's CPU stream: CPU's own masks.
        torch.testing.assert_close(first, run("cpu"))


def test_double_backward_matches_cpu(target):
    _, device = target

    def grad_of_grad(on):
        torch.manual_seed(3)
        cell = nn.LSTMCell(3, 4).to(on)
        x = torch.randn(2, 3).to(on).requires_grad_()
        hy, cy = cell(x)
        (gx,) = torch.autograd.grad((hy * hy).sum() + cy.sum(), x, create_graph=True)
        (ggx,) = torch.autograd.grad(gx.pow(2).sum(), x)
        return gx.detach().cpu(), ggx.cpu()

    torch.testing.assert_close(grad_of_grad(device), grad_of_grad("cpu"))


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "kind, fused, fused_backward",
    [
        (nn.LSTM, "_thnn_fused_lstm_cell", "_thnn_fused_lstm_cell_backward_impl"),
        (nn.GRU, "_thnn_fused_gru_cell", "_thnn_fused_gru_cell_backward"),
    ],
    ids=["LSTM", "GRU"],
)
def test_each_step_is_one_fused_op_without_a_round_trip(target, kind, fused, fused_backward):
    gpu_machine, device = target
    steps = 6
    module = kind(3, 4).to(device)
    x = torch.randn(steps, 2, 3, device=device, requires_grad=True)
    gpu_machine.synchronize()
    round_trips = gpu_machine.round_trips
    with _OpCounter() as counter:
        output, _ = module(x)
        output.sum().backward()
    assert counter.ops.count(fused) == steps, counter.ops
    assert counter.ops.count(fused_backward) == steps, counter.ops
    assert "sigmoid" not in counter.ops and "tanh" not in counter.ops, counter.ops
    assert gpu_machine.round_trips == round_trips, "an RNN step waited for the machine"
    assert torch.isfinite(x.grad.cpu()).all()


def test_word_language_model_step_matches_cpu(target):
    """pytorch/examples' word_language_model with --model LSTM: embedding,
    a two-layer LSTM with dropout, a decoder tied to the embedding, one
    training step of plain SGD with gradient clipping; in eval mode so that
    both sides run the same function."""
    _, device = target

    class RNNModel(nn.Module):
        def __init__(self, tokens=20, size=8):
            super().__init__()
            self.drop = nn.Dropout(0.2)
            self.encoder = nn.Embedding(tokens, size)
            self.rnn = nn.LSTM(size, size, 2, dropout=0.2)
            self.decoder = nn.Linear(size, tokens)
            self.decoder.weight = self.encoder.weight

        def forward(self, tokens, hidden):
            output, hidden = self.rnn(self.drop(self.encoder(tokens)), hidden)
            return self.decoder(self.drop(output)), hidden

    def step(on):
        torch.manual_seed(5)
        model = RNNModel().to(on).eval()
        tokens = torch.randint(0, 20, (7, 3)).to(on)
        targets = torch.randint(0, 20, (7 * 3,)).to(on)
        hidden = tuple(torch.zeros(2, 3, 8, device=on) for _ in range(2))
        losses = []
        for _ in range(3):
            hidden = tuple(h.detach() for h in hidden)
            model.zero_grad()
            logits, hidden = model(tokens, hidden)
            loss = nn.functional.cross_entropy(logits.view(-1, 20), targets)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-20)
            losses.append(loss.detach())
        return torch.stack(losses).cpu(), [p.detach().cpu() for p in model.parameters()]

    torch.testing.assert_close(step(device), step("cpu"))
