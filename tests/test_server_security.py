# SPDX-License-Identifier: AGPL-3.0-or-later
"""What a real mycelya-server refuses, end to end through the server provider
(README's Python on the machine, `mycelya-server --help`, docs/security.md):
remote functions under --no-python and without a token, and allocations past
--session-memory-limit. Each refusal is a RuntimeError that says why, and the
machine keeps working after it."""

import pytest
import torch
from server_process import ServerProcess

import mycelya_torch

TOKEN = "test-token"


@mycelya_torch.remote
def doubled(x):
    return x * 2


def _connect(server, token=TOKEN):
    # Loopback plaintext: TLS is test_server_provider.py's subject, not this file's.
    credentials = {} if token is None else {"token": token}
    return mycelya_torch.RemoteMachine("server", address=server.address, insecure=True, **credentials)


def _still_works(machine):
    a = torch.randn(8, 5)
    torch.testing.assert_close((a.to(machine.device()) @ a.T.to(machine.device())).cpu(), a @ a.T)


def test_no_python_refuses_remote_functions_and_the_machine_goes_on():
    with ServerProcess("--no-python", token=TOKEN) as server, _connect(server) as machine:
        x = torch.arange(4.0, device=machine.device())
        with pytest.raises(RuntimeError, match="started with --no-python"):
            doubled(x)
        _still_works(machine)
        torch.testing.assert_close(x.cpu(), torch.arange(4.0))


def test_a_server_without_a_token_refuses_remote_functions(monkeypatch):
    monkeypatch.delenv("MYCELYA_TOKEN", raising=False)
    with ServerProcess(token=None) as server, _connect(server, token=None) as machine:
        x = torch.arange(4.0, device=machine.device())
        with pytest.raises(RuntimeError, match="this server has no token.*start it with a token"):
            doubled(x)
        _still_works(machine)


def test_the_same_server_with_a_token_runs_them():
    # The control for the two refusals above: nothing else about these servers stops a call.
    with ServerProcess(token=TOKEN) as server, _connect(server) as machine:
        x = torch.arange(4.0, device=machine.device())
        torch.testing.assert_close(doubled(x).cpu(), torch.arange(4.0) * 2)


MIB = 1 << 20


def test_session_memory_limit_refuses_past_it_and_the_session_goes_on():
    with ServerProcess(f"--session-memory-limit={4 * MIB}", token=TOKEN) as server:
        with _connect(server) as machine, _connect(server) as neighbour:
            device = machine.device()
            # 3 MiB of float32 fits the 4 MiB limit ...
            held = torch.ones(3 * MIB // 4, device=device)
            assert held.sum().item() == 3 * MIB // 4
            # ... and 2 MiB more does not: refused at the next sync point, with what to do.
            too_much = torch.ones(2 * MIB // 4, device=device)
            with pytest.raises(RuntimeError, match="out of memory on the remote machine.*Free tensors"):
                machine.synchronize()
            # The refused tensor raises again when read, never with made-up values.
            with pytest.raises(RuntimeError, match="out of memory"):
                too_much.cpu()
            stats = machine.memory_stats()
            assert stats["memory_limit"] == 4 * MIB
            assert 3 * MIB <= stats["bytes_in_use"] < 4 * MIB
            # Another session of the same server has a limit of its own.
            theirs = torch.ones(3 * MIB // 4, device=neighbour.device())
            assert theirs.sum().item() == 3 * MIB // 4
            # Freeing makes room at once: the same 2 MiB fits in the batch that frees.
            del held
            again = torch.full((2 * MIB // 4,), 2.0, device=device)
            torch.testing.assert_close(again.cpu(), torch.full((2 * MIB // 4,), 2.0))
            _still_works(machine)
