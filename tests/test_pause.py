# SPDX-License-Identifier: AGPL-3.0-or-later
"""machine.pause() and resume(): every storage is saved, the machine ends, and
a new one takes the storages back under the same IDs, so tensors made before
the pause read the same after it. On local-cuda the server is a real process:
pausing stops it, resuming starts another on the same state folder."""

import glob
import logging
import os
import signal
import threading
import time

import pytest
import torch
from processes import alive, children_named

import mycelya_torch
from conftest import PROVIDER


@pytest.fixture(autouse=True)
def state_home(tmp_path, monkeypatch):
    """Paused state goes under $MYCELYA_HOME/state: a folder of this test's."""
    monkeypatch.setenv("MYCELYA_HOME", str(tmp_path))
    return tmp_path / "state"


def saved_files(state_home, pattern="*.storage"):
    return glob.glob(str(state_home / "*" / pattern))


def test_tensors_read_the_same_after_a_pause(state_home):
    machine = mycelya_torch.RemoteMachine(PROVIDER)
    device = machine.device()
    a = torch.randn(64, 32)
    b = torch.arange(100, dtype=torch.int64)
    ra = a.to(device)
    rb = b.to(device)
    product = ra @ ra.T
    view = ra[3:10, ::2]  # a view keeps reading its base's storage
    machine.pause()
    assert machine.paused and not machine.running
    assert "paused" in repr(machine)
    assert len(saved_files(state_home)) == 3
    machine.resume()
    assert machine.running and not machine.paused
    assert machine.unsaved_storages == []
    torch.testing.assert_close(ra.cpu(), a)
    torch.testing.assert_close(rb.cpu(), b)
    torch.testing.assert_close(product.cpu(), a @ a.T)
    torch.testing.assert_close(view.cpu(), a[3:10, ::2])
    # The folder is emptied once restored, and new work goes on as before.
    assert saved_files(state_home) == []
    torch.testing.assert_close((product + 1).cpu(), a @ a.T + 1)
    machine.stop()


def test_using_a_tensor_of_a_paused_machine_resumes_it(capfd):
    machine = mycelya_torch.RemoteMachine(PROVIDER)
    x = torch.arange(6.0, device=machine.device())
    machine.pause()
    previous = mycelya_torch.get_logging_level()
    mycelya_torch.set_logging_level(logging.INFO)
    try:
        assert (x * 2).sum().item() == 30.0
    finally:
        mycelya_torch.set_logging_level(previous)
    assert machine.running
    # The C++ side logs to stderr, through the one level both sides share.
    assert f"machine {machine.machine_id} is paused; resuming it" in capfd.readouterr().err
    machine.stop()


def test_a_model_and_its_optimizer_train_on_across_a_pause_as_on_the_cpu():
    torch.manual_seed(0)
    local = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    machine = mycelya_torch.RemoteMachine(PROVIDER)
    device = machine.device()
    remote = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    remote.load_state_dict(local.state_dict())
    remote.to(device)
    local_opt = torch.optim.Adam(local.parameters(), lr=0.01)
    remote_opt = torch.optim.Adam(remote.parameters(), lr=0.01)
    inputs = torch.randn(6, 32, 8)
    targets = torch.randn(6, 32, 1)

    def step(model, opt, x, y):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    for i in range(6):
        local_loss = step(local, local_opt, inputs[i], targets[i])
        remote_loss = step(remote, remote_opt, inputs[i].to(device), targets[i].to(device))
        if i == 2:
            # Parameters, gradients and Adam's moments all cross the pause.
            machine.pause()
            assert machine.paused
        torch.testing.assert_close(remote_loss.item(), local_loss.item())
    for mine, theirs in zip(remote.parameters(), local.parameters(), strict=True):
        torch.testing.assert_close(mine.cpu(), theirs.detach())
        torch.testing.assert_close(mine.grad.cpu(), theirs.grad)
    machine.stop()


def test_tensors_freed_while_paused_are_freed_at_the_resume():
    machine = mycelya_torch.RemoteMachine(PROVIDER)
    keep = torch.ones(16, device=machine.device())
    drop = [torch.ones(16, device=machine.device()) for _ in range(5)]
    machine.synchronize()
    before = machine.memory_stats()["storages"]
    machine.pause()
    del drop  # no reason to resume
    assert machine.paused
    machine.resume()
    assert machine.memory_stats()["storages"] == before - 5
    assert keep.sum().item() == 16.0
    machine.stop()


def test_an_earlier_ops_error_is_raised_by_pause_and_the_machine_keeps_running():
    machine = mycelya_torch.RemoteMachine(PROVIDER)
    x = torch.ones(4, device=machine.device())
    # An op whose failure only the machine can tell (a bad index), queued.
    torch.zeros(2, device=machine.device()).index_fill_(0, torch.tensor([5], device=x.device), 1.0)
    with pytest.raises(RuntimeError, match=r"aten::index_fill.*index 5 is out of bounds for dimension 0"):
        machine.pause()
    assert machine.running and not machine.paused
    machine.pause()  # the error was reported once; now the pause goes through
    assert x.sum().item() == 4.0
    machine.stop()


def test_stopping_a_paused_machine_drops_what_it_saved(state_home):
    machine = mycelya_torch.RemoteMachine(PROVIDER)
    x = torch.ones(16, device=machine.device())
    machine.pause()
    assert len(saved_files(state_home)) == 1
    machine.stop()
    assert not machine.paused and not machine.running
    assert saved_files(state_home, "*") == []
    with pytest.raises(RuntimeError, match="not running"):
        x.cpu()


def test_a_machine_that_never_paused_leaves_no_state(state_home):
    machine = mycelya_torch.RemoteMachine(PROVIDER)
    torch.ones(16, device=machine.device()).sum().item()
    machine.stop()
    assert saved_files(state_home, "*") == []


local_cuda_only = pytest.mark.skipif(
    PROVIDER != "local-cuda", reason="needs a server process to fail or kill"
)


@local_cuda_only
def test_a_resume_that_cannot_start_raises_and_leaves_the_machine_paused(monkeypatch):
    machine = mycelya_torch.RemoteMachine(PROVIDER)
    x = torch.arange(5.0, device=machine.device())
    machine.pause()
    monkeypatch.setenv("MYCELYA_SERVER", "/nonexistent/mycelya-server")
    with pytest.raises(RuntimeError, match="Could not resume .* stays paused"):
        machine.resume()
    assert machine.paused
    monkeypatch.delenv("MYCELYA_SERVER")
    assert x.sum().item() == 10.0  # resumes, with the storage still saved
    machine.stop()


@local_cuda_only
def test_a_pause_cut_short_keeps_what_it_wrote_and_names_what_it_did_not(state_home):
    machine = mycelya_torch.RemoteMachine(PROVIDER)
    device = machine.device()
    # Enough storages that the save is still writing when the server dies.
    sources = [torch.full((256, 1024), float(i)) for i in range(300)]
    tensors = [s.to(device) for s in sources]
    machine.synchronize()
    (server,) = children_named("mycelya-server")

    def kill_once_some_are_written():
        deadline = time.monotonic() + 60
        while len(saved_files(state_home)) < 5 and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(server, signal.SIGKILL)

    killer = threading.Thread(target=kill_once_some_are_written)
    killer.start()
    try:
        with pytest.raises(RuntimeError, match="while pausing.*What it saved is kept"):
            machine.pause()
    finally:
        killer.join()
    assert not alive(server)
    assert machine.paused
    written = len(saved_files(state_home))
    assert 5 <= written < len(tensors)
    machine.resume()
    unsaved = set(machine.unsaved_storages)
    assert len(unsaved) == len(tensors) - written
    restored = [i for i, t in enumerate(tensors) if t.untyped_storage().data_ptr() not in unsaved]
    assert len(restored) == written
    for i in restored:
        torch.testing.assert_close(tensors[i].cpu(), sources[i])
    lost = next(i for i, t in enumerate(tensors) if t.untyped_storage().data_ptr() in unsaved)
    with pytest.raises(RuntimeError, match="was not saved when its machine paused"):
        tensors[lost].cpu()
    # The machine works on, the lost tensor aside.
    torch.testing.assert_close((tensors[restored[0]] + 1).cpu(), sources[restored[0]] + 1)
    machine.stop()


@local_cuda_only
def test_a_server_stopped_by_its_idle_timeout_saves_and_resume_brings_the_tensors_back(
    state_home,
):
    # The server must not stop before the upload: from the start to the
    # sync below took at most 0.64 s here under load, over 5x less than the
    # timeout.
    machine = mycelya_torch.RemoteMachine(PROVIDER, idle_timeout=4)
    a = torch.randn(100)
    x = a.to(machine.device())
    machine.synchronize()
    (server,) = children_named("mycelya-server")
    deadline = time.monotonic() + 30
    while alive(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(server)
    assert len(saved_files(state_home)) == 1
    with pytest.raises(RuntimeError, match="was lost"):
        x.cpu()
    machine.resume()
    torch.testing.assert_close(x.cpu(), a)
    machine.stop()


@local_cuda_only
def test_a_machine_whose_server_died_unsaved_cannot_resume_to_zeros(state_home):
    machine = mycelya_torch.RemoteMachine(PROVIDER)
    x = torch.ones(100, device=machine.device())
    machine.synchronize()
    (server,) = children_named("mycelya-server")
    os.kill(server, signal.SIGKILL)  # no chance to save anything
    with pytest.raises(RuntimeError, match="was lost"):
        x.cpu()
    with pytest.raises(RuntimeError, match="nothing was saved"):
        machine.resume()
    assert machine.paused  # the tensors are gone, and stop() says so
    machine.stop()
    with pytest.raises(RuntimeError, match="not running"):
        x.cpu()
