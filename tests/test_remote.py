# SPDX-License-Identifier: AGPL-3.0-or-later
"""@mycelya_torch.remote: Python functions run on the machine that holds their
tensors (in the server's process on local-cuda, in this one on mock)."""

import concurrent.futures
import gc
import importlib.metadata
import os
import sys
import sysconfig
import time
import uuid
import zipfile

import pytest
import torch

import mycelya_torch
from conftest import MACHINE_ARGS, PROVIDER
from mycelya_torch import remote
from mycelya_torch._remote_runtime import RemoteTraceback


@remote
def scale(x, k):
    return x * k


@remote
def process_id(device):
    return os.getpid()


def test_runs_on_the_machine_with_tensors_by_reference(machine, device):
    x = torch.randn(64, 64, device=device)
    expected = x.cpu() * 3
    uploaded = machine.bytes_uploaded
    y = scale(x, 3)
    assert y.device == device
    assert machine.bytes_uploaded == uploaded  # no tensor byte went up for x or came back for y
    torch.testing.assert_close(y.cpu(), expected)
    pid = process_id(device)
    if PROVIDER == "mock":
        assert pid == os.getpid()
    else:
        assert pid != os.getpid()  # the server's process, not this one


def test_the_function_gets_the_executors_memory_not_a_copy(device):
    @remote
    def address(x):
        return x.data_ptr()

    x = torch.zeros(4, 8, device=device)
    first = address(x)
    assert address(x) == first  # the same memory, call after call
    assert address(x[1]) == first + 8 * 4  # a view is a view of it


def test_finds_tensors_in_nested_arguments_and_returns_structures(device):
    a, b, c = (torch.randn(3, 3, device=device) for _ in range(3))

    @remote
    def combine(items, mapping, *, scale):
        first, (second,) = items
        return {
            "sum": first + second + mapping["c"],
            "scaled": [first * scale],
            "norm": float(first.norm()),
        }, (
            "text",
            7,
        )

    out, extra = combine([a, (b,)], {"c": c}, scale=2.0)
    assert extra == ("text", 7)
    torch.testing.assert_close(out["sum"].cpu(), a.cpu() + b.cpu() + c.cpu())
    torch.testing.assert_close(out["scaled"][0].cpu(), a.cpu() * 2)
    assert out["norm"] == pytest.approx(float(a.cpu().norm()), rel=1e-5)


def test_builds_new_tensors_on_the_machine(device):
    @remote
    def make(device, n):
        generator = torch.Generator(device=device).manual_seed(5)
        return torch.randn(n, n, device=device, generator=generator), torch.arange(n, device=device)

    x, r = make(device, 8)
    expected = torch.randn(8, 8, generator=torch.Generator().manual_seed(5))
    assert x.device == device
    torch.testing.assert_close(x.cpu(), expected)
    torch.testing.assert_close(r.cpu(), torch.arange(8))
    torch.testing.assert_close((x + 1).cpu(), expected + 1)  # later ops see the new storage


def test_returned_views_share_storage_with_inputs_and_each_other(device):
    x = torch.zeros(4, 4, device=device)

    @remote
    def views(x):
        fresh = torch.ones(6, device=x.device)
        return x[1], x.t(), fresh, fresh[2:4]

    row, transposed, fresh, part = views(x)
    row.fill_(5)
    assert transposed.cpu()[0, 1] == 5  # the same storage as x
    assert x.cpu()[1].eq(5).all()
    part.fill_(3)
    torch.testing.assert_close(fresh.cpu(), torch.tensor([1.0, 1, 3, 3, 1, 1]))


def test_in_place_changes_reach_the_caller(device):
    w = torch.nn.Parameter(torch.randn(5, device=device))
    x = torch.randn(5, device=device)
    flag = torch.zeros(3, device=device)
    w_cpu = w.detach().cpu()

    @remote
    def step(w, x, flag):
        (w * x).sum().backward()
        flag.add_(1)
        x.requires_grad_(True)

    step(w, x, flag)
    torch.testing.assert_close(w.grad.cpu(), x.detach().cpu())
    assert w.grad.device == device
    assert x.requires_grad
    torch.testing.assert_close(flag.cpu(), torch.ones(3))
    torch.testing.assert_close(w.detach().cpu(), w_cpu)


def test_trains_a_step_and_returns_the_state_dict(device):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    reference = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    reference.load_state_dict(model.state_dict())
    data, target = torch.randn(16, 4), torch.randn(16, 1)
    model.to(device)

    @remote
    def train_step(model, data, target):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = torch.nn.functional.mse_loss(model(data), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item(), model.state_dict()

    loss, state = train_step(model, data.to(device), target.to(device))
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    expected_loss = torch.nn.functional.mse_loss(reference(data), target)
    optimizer.zero_grad()
    expected_loss.backward()
    optimizer.step()
    assert loss == pytest.approx(expected_loss.item(), rel=1e-5)
    for name, value in reference.state_dict().items():
        assert state[name].device == device
        torch.testing.assert_close(state[name].cpu(), value)
        torch.testing.assert_close(dict(model.named_parameters())[name].detach().cpu(), value)
        torch.testing.assert_close(
            dict(model.named_parameters())[name].grad.cpu(), dict(reference.named_parameters())[name].grad
        )


def test_tied_tensors_come_back_tied(device):
    @remote
    def tied(device):
        embedding = torch.nn.Embedding(10, 4).to(device)
        head = torch.nn.Linear(4, 10, bias=False).to(device)
        head.weight = embedding.weight
        return {
            "embed.weight": embedding.weight,
            "head.weight": head.weight,
            "copy": embedding.weight.detach(),
        }

    state = tied(device)
    assert state["embed.weight"] is state["head.weight"]
    assert isinstance(state["embed.weight"], torch.nn.Parameter)
    with torch.no_grad():
        state["embed.weight"].zero_()
    assert state["copy"].cpu().eq(0).all()  # a view of the same storage


def test_run_async_returns_a_future_in_stream_order(device):
    x = torch.zeros(4, device=device)
    x.add_(1)  # queued before the call: the call sees it

    @remote(run_async=True)
    def double(x):
        return x * 2

    future = double(x)
    assert isinstance(future, concurrent.futures.Future)
    x.add_(10)  # queued after: the call does not see it
    y = future.result()
    torch.testing.assert_close(y.cpu(), torch.full((4,), 2.0))
    torch.testing.assert_close(x.cpu(), torch.full((4,), 11.0))


def test_a_call_sees_earlier_ops_and_later_ops_see_its_writes(device):
    x = torch.zeros(3, device=device)
    x.add_(2)

    @remote
    def bump(x):
        x.mul_(5)

    bump(x)
    x.add_(1)
    torch.testing.assert_close(x.cpu(), torch.full((3,), 11.0))


def test_no_tensors_is_a_runtime_error():
    with pytest.raises(RuntimeError, match="No mycelya tensors or devices found"):
        scale(torch.ones(2), 2)


def test_tensors_of_two_machines_are_refused(device):
    other = mycelya_torch.RemoteMachine(PROVIDER, *MACHINE_ARGS)
    try:
        with pytest.raises(RuntimeError, match="different machines"):
            scale([torch.ones(2, device=device), torch.ones(2, device=other.device())], 2)
    finally:
        other.stop()


def test_an_exception_reaches_the_caller_with_the_remote_traceback(device):
    @remote
    def fails(x):
        raise KeyError(f"no such key for shape {tuple(x.shape)}")

    x = torch.ones(2, device=device)
    with pytest.raises(KeyError, match=r"no such key for shape \(2,\)") as raised:
        fails(x)
    assert isinstance(raised.value.__cause__, RemoteTraceback)
    assert "in fails" in str(raised.value.__cause__)
    # The machine keeps working, and the next call too.
    torch.testing.assert_close(scale(x, 4).cpu(), torch.full((2,), 4.0))
    torch.testing.assert_close((x + 1).cpu(), torch.full((2,), 2.0))


def test_an_unpicklable_argument_is_a_value_error(device):
    import threading

    with pytest.raises(ValueError, match="cannot send the arguments"):
        scale(torch.ones(2, device=device), threading.Lock())


def test_a_thousand_calls_leak_nothing(machine, device):
    x = torch.ones(16, device=device)

    @remote
    def blocks(device):
        gc.collect()
        return sys.getallocatedblocks()

    gc.collect()  # earlier tests' exceptions keep their frames' tensors in cycles
    for _ in range(100):
        scale(x, 2)
    storages = machine.memory_stats()["storages"]
    before = blocks(device)
    for _ in range(1000):
        y = scale(x, 2)
    del y
    after = blocks(device)
    assert machine.memory_stats()["storages"] == storages
    # A leak of even one object per call would show as a thousand blocks or more.
    assert after - before < 500, (before, after)


@pytest.mark.skipif(PROVIDER == "mock", reason="the mock has no server to stop itself")
def test_a_long_call_is_not_idle_time(device):
    # The first remote call and op of a process import for seconds before
    # they send anything: done here, they are not idle time of the machine
    # under test.
    scale(torch.ones(1, device=device), 1)
    assert (torch.ones(1, device=device) + 1).item() == 2
    # After that the next op followed the call's end within 8 ms here under
    # load (local-cuda): the timeout is over 5x that, and the call lasts two.
    idle_s = 2
    machine = mycelya_torch.RemoteMachine(PROVIDER, *MACHINE_ARGS, idle_timeout=idle_s)
    try:

        @remote
        def slow(device):
            time.sleep(2 * idle_s)
            return "done"

        assert slow(machine.device()) == "done"
        # The idle time counts from the end of the call: the machine still runs.
        assert (torch.ones(1, device=machine.device()) + 1).item() == 2
    finally:
        machine.stop()


# --- pip ---------------------------------------------------------------------


def _probe_wheel(folder, name):
    """A wheel of a one-module package, made by hand: pip installs it offline."""
    module = name.replace("-", "_")
    path = folder / f"{module}-1.0-py3-none-any.whl"
    files = {
        f"{module}.py": "VALUE = 42\n",
        f"{module}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{module}-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(f"{file},,\n" for file in files) + f"{module}-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as wheel:
        for file, text in files.items():
            wheel.writestr(file, text)
        wheel.writestr(f"{module}-1.0.dist-info/RECORD", record)
    return path, module


@pytest.fixture
def probe(tmp_path):
    # A name of this test's own: a module an earlier test installed (and
    # imported) must not answer for this one.
    name = f"mycelya-probe-{uuid.uuid4().hex[:12]}"
    return _probe_wheel(tmp_path, name)


@remote
def probe_value(device, module):
    import importlib

    return importlib.import_module(module).VALUE


@remote
def probe_file(device, module):
    import importlib

    return importlib.import_module(module).__file__


def test_pip_install_installs_on_the_machine(machine, device, probe):
    path, module = probe
    # Nothing answers for the probe's name before the install.
    with pytest.raises(ModuleNotFoundError, match=module):
        probe_value(device, module)
    machine.pip_install(str(path))
    assert probe_value(device, module) == 42


def test_pip_install_leaves_the_environment_it_runs_from_alone(machine, device, probe):
    # The machine's Python here is this test's own venv (mock runs in this
    # process, local-cuda's server from the same venv): pip must install
    # into a folder of the machine's, never into that environment.
    path, module = probe
    machine.pip_install(str(path))
    installed_at = probe_file(device, module)
    environment = [sysconfig.get_paths()[key] for key in ("purelib", "platlib")]
    assert not any(installed_at.startswith(folder) for folder in environment), installed_at
    assert "mycelya-packages-" in installed_at
    in_environment = {d.metadata["Name"] for d in importlib.metadata.distributions(path=environment)}
    assert module.replace("_", "-") not in in_environment


def test_remote_packages_install_before_the_first_call(device, probe):
    path, module = probe

    @remote(packages=[str(path)])
    def value(device):
        import importlib

        return importlib.import_module(module).VALUE

    assert value(device) == 42


def test_machine_packages_install_at_start(probe):
    path, module = probe
    machine = mycelya_torch.RemoteMachine(PROVIDER, *MACHINE_ARGS, packages=[str(path)])
    try:
        assert probe_value(machine.device(), module) == 42
    finally:
        machine.stop()


def test_a_failed_pip_install_shows_pips_error(machine, device, tmp_path):
    missing = tmp_path / "not_there-1.0-py3-none-any.whl"
    with pytest.raises(RuntimeError, match="pip install .* failed") as raised:
        machine.pip_install(str(missing))
    assert "not_there-1.0-py3-none-any.whl" in str(raised.value)
    torch.testing.assert_close(scale(torch.ones(2, device=device), 3).cpu(), torch.full((2,), 3.0))


def test_bad_arguments_are_value_errors(machine):
    with pytest.raises(ValueError, match="decorates a function"):
        remote(3)
    with pytest.raises(ValueError, match="run_async"):
        remote(run_async="yes")(lambda x: x)
    with pytest.raises(ValueError, match="packages"):
        remote(packages="numpy")(lambda x: x)
    with pytest.raises(ValueError, match="packages"):
        machine.pip_install("")
