# SPDX-License-Identifier: AGPL-3.0-or-later
"""Autograd on mycelya tensors matches the CPU: higher-order gradients,
retain_grad, no_grad, detach and hooks."""

import torch


def _pair(device, *shape, requires_grad=True):
    cpu = torch.randn(*shape, dtype=torch.float64, requires_grad=requires_grad)
    remote = cpu.detach().to(device).requires_grad_(requires_grad)
    return cpu, remote


def test_second_and_third_order_gradients(device):
    x, xr = _pair(device, 5)

    def derivatives(t):
        y = (t.sin() * t.pow(3)).sum()
        (g,) = torch.autograd.grad(y, t, create_graph=True)
        (gg,) = torch.autograd.grad(g.sum(), t, create_graph=True)
        (ggg,) = torch.autograd.grad(gg.sum(), t)
        return g, gg, ggg

    for expected, actual in zip(derivatives(x), derivatives(xr), strict=True):
        torch.testing.assert_close(actual.cpu(), expected.detach())


def test_double_backward_through_a_network(device):
    # A gradient penalty, as in WGAN-GP: backward through a gradient.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    remote = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    remote.load_state_dict(net.state_dict())
    remote.to(device)
    x, xr = _pair(device, 3, 4)
    for model, inp in ((net, x), (remote, xr)):
        (grad,) = torch.autograd.grad(model(inp).sum(), inp, create_graph=True)
        grad.pow(2).sum().backward()
    for expected, actual in zip(net.parameters(), remote.parameters(), strict=True):
        # The last bias does not reach the input gradient: no gradient on either side.
        assert (actual.grad is None) == (expected.grad is None)
        if expected.grad is not None:
            torch.testing.assert_close(actual.grad.cpu(), expected.grad)
    torch.testing.assert_close(xr.grad.cpu(), x.grad)


def test_retain_grad_keeps_an_intermediate_gradient(device):
    x, xr = _pair(device, 4, 3)
    results = []
    for t in (x, xr):
        hidden = t.exp()
        hidden.retain_grad()
        (hidden * 3).sum().backward()
        results.append((hidden.grad, t.grad))
    (expected_hidden, expected_leaf), (hidden_grad, leaf_grad) = results
    torch.testing.assert_close(hidden_grad.cpu(), expected_hidden)
    torch.testing.assert_close(leaf_grad.cpu(), expected_leaf)


def test_no_grad_and_detach_record_nothing(device):
    _, xr = _pair(device, 3)
    with torch.no_grad():
        y = xr * 2
    assert not y.requires_grad and y.grad_fn is None
    d = xr.detach()
    assert not d.requires_grad
    # detach shares memory: an in-place change shows through the original.
    d.add_(1)
    torch.testing.assert_close(xr.detach().cpu(), d.cpu())
    z = (xr * xr.detach()).sum()
    z.backward()
    torch.testing.assert_close(xr.grad.cpu(), xr.detach().cpu())


def test_tensor_and_module_hooks(device):
    x, xr = _pair(device, 2, 3)
    seen = []
    for t in (x, xr):
        handle = t.register_hook(lambda grad: grad * 10)
        (t * t).sum().backward()
        handle.remove()
    torch.testing.assert_close(xr.grad.cpu(), x.grad)

    layer = torch.nn.Linear(3, 2).double().to(device)
    layer.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    layer.register_full_backward_hook(lambda module, grad_in, grad_out: seen.append(grad_out[0].device))
    layer(xr.detach().requires_grad_()).sum().backward()
    assert seen == [torch.Size([2, 2]), device]


def test_gradient_accumulates_over_two_backwards(device):
    x, xr = _pair(device, 6)
    for t in (x, xr):
        (t.sigmoid().sum()).backward()
        (t.tanh().sum()).backward()
    torch.testing.assert_close(xr.grad.cpu(), x.grad)
