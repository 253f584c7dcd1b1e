# SPDX-License-Identifier: AGPL-3.0-or-later
"""The server provider: a mycelya-server the user runs, reached over TCP on loopback with TLS."""

import copy
import logging

import pytest
import torch
from delay_proxy import DelayProxy
from server_process import ServerProcess, make_test_pki

import mycelya_torch

TOKEN = "test-token"
# A refused TLS handshake shows only as a channel that never gets ready
# (GrpcSession), so a refusal takes the whole connect timeout, and the
# message is the one a slow server would get. The refusals below therefore
# get a timeout in which the same server with the right certificate does
# connect: a TLS connection to a local server took at most 0.03 s here under
# load, over 5x less.
CONNECT_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(pki):
    """A server whose certificate the test CA signed."""
    with ServerProcess(
        f"--tls-cert={pki / 'server.pem'}", f"--tls-key={pki / 'server.key'}", token=TOKEN
    ) as server:
        yield server


@pytest.fixture(scope="module")
def self_signed_server(pki):
    """A server with a self-signed certificate, which only pinning can trust."""
    with ServerProcess(
        f"--tls-cert={pki / 'other.pem'}", f"--tls-key={pki / 'other.key'}", token=TOKEN
    ) as server:
        yield server


def _matmul_matches_cpu(machine):
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    remote = a.to(machine.device()) @ b.to(machine.device())
    torch.testing.assert_close(remote.cpu(), a @ b)


def test_tls_with_a_ca_runs_ops(tls_server, pki):
    with mycelya_torch.RemoteMachine(
        "server", address=f"localhost:{tls_server.port}", token=TOKEN, tls_ca=pki / "ca.pem"
    ) as machine:
        assert machine.devices() == ["cpu"]
        _matmul_matches_cpu(machine)
    # stop() ends this client's session, never the server.
    assert tls_server.process.poll() is None
    with mycelya_torch.RemoteMachine(
        "server", address=f"localhost:{tls_server.port}", token=TOKEN, tls_ca=str(pki / "ca.pem")
    ) as again:
        _matmul_matches_cpu(again)


def test_pinned_certificate_reached_by_ip(self_signed_server, pki):
    with mycelya_torch.RemoteMachine(
        "server",
        address=self_signed_server.address,
        token=TOKEN,
        tls_cert=pki / "other.pem",
        tls_server_name="localhost",
    ) as machine:
        _matmul_matches_cpu(machine)


def test_wrong_certificate_is_refused(tls_server, self_signed_server, pki):
    # Each server with the right certificate connects within the timeout.
    for server, trust in [
        (tls_server, {"tls_ca": pki / "ca.pem"}),
        (self_signed_server, {"tls_cert": pki / "other.pem"}),
    ]:
        with mycelya_torch.RemoteMachine(
            "server",
            address=f"localhost:{server.port}",
            token=TOKEN,
            connect_timeout=CONNECT_TIMEOUT_S,
            **trust,
        ) as machine:
            _matmul_matches_cpu(machine)
    # A server whose certificate the CA did not sign.
    with pytest.raises(RuntimeError, match="over TLS.*certificate"):
        mycelya_torch.RemoteMachine(
            "server",
            address=f"localhost:{self_signed_server.port}",
            token=TOKEN,
            tls_ca=pki / "ca.pem",
            connect_timeout=CONNECT_TIMEOUT_S,
        )
    # A pinned certificate that is not the server's.
    with pytest.raises(RuntimeError, match="over TLS.*certificate"):
        mycelya_torch.RemoteMachine(
            "server",
            address=f"localhost:{tls_server.port}",
            token=TOKEN,
            tls_cert=pki / "other.pem",
            connect_timeout=CONNECT_TIMEOUT_S,
        )
    # No CA at all: the system's roots do not know the test CA.
    with pytest.raises(RuntimeError, match="over TLS"):
        mycelya_torch.RemoteMachine(
            "server", address=f"localhost:{tls_server.port}", token=TOKEN, connect_timeout=CONNECT_TIMEOUT_S
        )
    assert tls_server.process.poll() is None and self_signed_server.process.poll() is None


def test_wrong_token_is_refused_and_the_right_one_works(tls_server, pki):
    target = dict(address=f"localhost:{tls_server.port}", tls_ca=pki / "ca.pem")
    with pytest.raises(RuntimeError, match="wrong or missing token"):
        mycelya_torch.RemoteMachine("server", token="not-the-token", **target)
    with mycelya_torch.RemoteMachine("server", token=TOKEN, **target) as machine:
        _matmul_matches_cpu(machine)


def test_token_from_the_environment(tls_server, pki, monkeypatch):
    monkeypatch.setenv("MYCELYA_TOKEN", TOKEN)
    with mycelya_torch.RemoteMachine(
        "server", address=f"localhost:{tls_server.port}", tls_ca=pki / "ca.pem"
    ) as machine:
        _matmul_matches_cpu(machine)


def test_server_gone_mid_run_raises_was_lost(pki):
    server = ServerProcess(f"--tls-cert={pki / 'server.pem'}", f"--tls-key={pki / 'server.key'}", token=TOKEN)
    machine = mycelya_torch.RemoteMachine(
        "server", address=f"localhost:{server.port}", token=TOKEN, tls_ca=pki / "ca.pem"
    )
    x = torch.ones(8, device=machine.device())
    assert (x * 2).sum().item() == 16
    server.kill()
    with pytest.raises(RuntimeError, match="was lost"):
        for _ in range(100):
            (x * 3).sum().item()
    machine.stop()
    server.stop()
    # A server that is not there at all: an error within the connect timeout.
    with pytest.raises(RuntimeError, match="could not connect"):
        mycelya_torch.RemoteMachine(
            "server",
            address=f"localhost:{server.port}",
            token=TOKEN,
            tls_ca=pki / "ca.pem",
            connect_timeout=1,
        )


def test_plaintext_only_on_loopback():
    with ServerProcess(token=TOKEN) as server:
        with mycelya_torch.RemoteMachine(
            "server", address=server.address, token=TOKEN, insecure=True, connect_timeout=CONNECT_TIMEOUT_S
        ) as machine:
            _matmul_matches_cpu(machine)
        # A plaintext server is not a TLS one: the client says so.
        with pytest.raises(RuntimeError, match="over TLS"):
            mycelya_torch.RemoteMachine(
                "server", address=server.address, token=TOKEN, connect_timeout=CONNECT_TIMEOUT_S
            )
    with pytest.raises(ValueError, match="only to a loopback address"):
        mycelya_torch.RemoteMachine(
            "server", address="10.1.2.3:50051", token=TOKEN, insecure=True, start=False
        )


@pytest.mark.parametrize(
    "options, message",
    [
        ({}, "address= must be"),
        ({"address": "gpu-box"}, "address= must be"),
        ({"address": "gpu-box:50051"}, "token= is missing"),
        ({"address": "gpu-box:50051", "token": "t", "colour": "blue"}, "has no option 'colour'"),
        ({"address": "gpu-box:50051", "token": "t", "tls_ca": "/nonexistent.pem"}, "cannot be read"),
        ({"address": "gpu-box:50051", "token": "t", "insecure": "yes"}, "insecure= must be True or False"),
        (
            {"address": "gpu-box:50051", "token": "t", "connect_timeout": -1},
            "connect_timeout= must be a positive",
        ),
        (
            {"address": "gpu-box:50051", "token": "t", "connect_timeout": 1e10},
            "connect_timeout= is at most 3600",
        ),
        (
            {"address": "gpu-box:50051", "token": "t", "retries": [1]},
            "must be a string, path, number or bool",
        ),
    ],
)
def test_bad_options_are_value_errors(options, message, monkeypatch):
    monkeypatch.delenv("MYCELYA_TOKEN", raising=False)
    with pytest.raises(ValueError, match=message):
        mycelya_torch.RemoteMachine("server", start=False, **options)


def test_providers_without_options_refuse_them():
    with pytest.raises(ValueError, match="provider 'mock' takes no options, got 'address'"):
        mycelya_torch.RemoteMachine("mock", address="gpu-box:50051")


def test_pause_and_resume_keep_tensors(pki, tmp_path):
    state = tmp_path / "state"
    with ServerProcess(
        f"--tls-cert={pki / 'server.pem'}",
        f"--tls-key={pki / 'server.key'}",
        f"--state-dir={state}",
        token=TOKEN,
    ) as server:
        machine = mycelya_torch.RemoteMachine(
            "server", address=f"localhost:{server.port}", token=TOKEN, tls_ca=pki / "ca.pem"
        )
        values = torch.randn(100, 10)
        x = values.to(machine.device())
        machine.pause()
        assert machine.paused
        machine.resume()
        torch.testing.assert_close(x.cpu(), values)
        machine.stop()


def test_start_shows_its_stage_in_the_log(tls_server, pki, capfd):
    mycelya_torch.set_logging_level(logging.INFO)
    try:
        with mycelya_torch.RemoteMachine(
            "server", address=f"localhost:{tls_server.port}", token=TOKEN, tls_ca=pki / "ca.pem"
        ):
            pass
    finally:
        mycelya_torch.set_logging_level(logging.WARNING)
    err = capfd.readouterr().err
    assert f"connecting to localhost:{tls_server.port}" in err
    assert "started in" in err


def test_a_slow_link_keeps_numbers_and_one_round_trip_per_item():
    # 10 ms each way: the client sends batches as they come instead of
    # waiting for a free slot (kMaxBatchesInFlightSlowLink).
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    data, target = torch.randn(8, 16), torch.randint(0, 4, (8,))

    def train(device, machine=None):
        net = copy.deepcopy(model).to(device)
        optimizer = torch.optim.AdamW(net.parameters())
        losses = []
        for _ in range(5):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(data.to(device)), target.to(device))
            loss.backward()
            optimizer.step()
            before = machine.round_trips if machine else 0
            losses.append(loss.item())
            if machine:
                assert machine.round_trips == before + 1
        return losses, [p.detach().cpu() for p in net.parameters()]

    with ServerProcess(token=TOKEN) as server:
        proxy = DelayProxy(server.port, 0.010)
        try:
            with mycelya_torch.RemoteMachine(
                "server", address=f"127.0.0.1:{proxy.port}", token=TOKEN, insecure=True
            ) as machine:
                remote_losses, remote_params = train(machine.device(), machine)
                for _ in range(200):  # many batches in flight at once
                    x = torch.ones(4, device=machine.device())
                    x.add_(1)
                assert x.sum().item() == 8
        finally:
            proxy.close()
    local_losses, local_params = train("cpu")
    torch.testing.assert_close(remote_losses, local_losses)
    torch.testing.assert_close(remote_params, local_params)
