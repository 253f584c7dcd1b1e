# SPDX-License-Identifier: AGPL-3.0-or-later
"""The runpod provider against the loopback fake of RunPod's REST API v2 (tests/fakes/)."""

import logging
import os
import pty
import signal
import subprocess
import sys
import threading

import pytest
import torch
from processes import children_named
from runpod_fixtures import ENTRYPOINT, start_fake_runpod, wait_until
from server_process import make_test_pki, server_binary

import mycelya_torch


@pytest.fixture(scope="module")
def fake():
    fake = start_fake_runpod()
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def _no_pod_outlives_its_test(fake):
    fake.no_capacity_gpu_ids = set()
    fake.insufficient_balance = False
    fake.stuck_provisioning = fake.error_on_start = fake.no_gpu_on_resume = False
    yield
    for machine in mycelya_torch.get_all_machines():
        machine.stop()  # a failed test's machine, so the next test starts clean
    # Every test stops its machines; no container may be left running, billed.
    assert wait_until(lambda: not fake.running_pods(), 15), fake.pods()


def _matmul_matches_cpu(machine):
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    remote = a.to(machine.device()) @ b.to(machine.device())
    torch.testing.assert_close(remote.cpu(), a @ b)


def _created(fake):
    return [body for method, path, body in fake.requests() if method == "POST" and path == "/v2/pods"]


def test_h100_machine_runs_ops_and_stop_terminates_the_pod(fake):
    before = len(_created(fake))
    machine = mycelya_torch.RemoteMachine("runpod", "H100")
    _matmul_matches_cpu(machine)
    body = _created(fake)[before]
    assert body["gpu"] == {"id": "NVIDIA H100 80GB HBM3", "count": 1}
    assert body["ports"] == ["50051/tcp"]
    assert body["mounts"]["persistent"]["path"] == "/workspace"
    assert "BEGIN CERTIFICATE" in body["env"]["MYCELYA_TLS_CERT"]
    (pod,) = fake.pods()
    machine.stop()
    assert all(p["id"] != pod["id"] for p in fake.pods())


def test_no_capacity_falls_back_to_the_next_candidate(fake):
    fake.no_capacity_gpu_ids = {"NVIDIA H100 80GB HBM3"}
    with mycelya_torch.RemoteMachine("runpod", "H100", gpu_count=2) as machine:
        _matmul_matches_cpu(machine)
        assert _created(fake)[-1]["gpu"] == {"id": "NVIDIA H100 PCIe", "count": 2}


def test_no_capacity_anywhere_says_so(fake):
    fake.no_capacity_gpu_ids = {"NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL"}
    with pytest.raises(RuntimeError, match="no H100 is available on RunPod now"):
        mycelya_torch.RemoteMachine("runpod", "H100")
    assert fake.pods() == []


@pytest.mark.parametrize(
    "args, options, message",
    [
        (("A10G",), {}, "RunPod has no A10G GPUs; it offers .*H100"),
        ((), {}, "a RunPod machine needs a gpu_type"),
        (("H100",), {"cloud": "CHEAP"}, 'cloud= must be "SECURE" or "COMMUNITY"'),
        (("H100",), {"volume": 5}, "volume= must be a whole number of GB from 10"),
        (("H100",), {"region": "eu"}, "has no option 'region'"),
    ],
)
def test_bad_arguments_are_value_errors(fake, args, options, message):
    with pytest.raises(ValueError, match=message):
        mycelya_torch.RemoteMachine("runpod", *args, start=False, **options)


def test_missing_and_refused_keys(fake, monkeypatch):
    monkeypatch.delenv("RUNPOD_API_KEY")
    with pytest.raises(RuntimeError, match="RUNPOD_API_KEY is not set"):
        mycelya_torch.RemoteMachine("runpod", "H100")
    monkeypatch.setenv("RUNPOD_API_KEY", "rp_wrong")
    with pytest.raises(RuntimeError, match="refused the API key.*RUNPOD_API_KEY"):
        mycelya_torch.RemoteMachine("runpod", "H100")
    # The key would cross the network in the clear.
    monkeypatch.setenv("RUNPOD_API_BASE_URL", "http://api.example.com/v2")
    with pytest.raises(RuntimeError, match="must be an https:// URL"):
        mycelya_torch.RemoteMachine("runpod", "H100")


def test_a_low_balance_says_so(fake):
    fake.insufficient_balance = True
    with pytest.raises(RuntimeError, match="balance is too low to start a pod \\(402"):
        mycelya_torch.RemoteMachine("runpod", "H100")
    assert fake.pods() == []


def test_an_interactive_terminal_shows_a_progress_line(fake):
    # stderr on a pseudo-terminal: the start's line is rewritten in place
    # ("\r" and erase-line) with the stage and the seconds, then cleared.
    # Each stage lasts until the plugin's poll has seen it, however late.
    fake.hold_until_polled = True
    script = "import mycelya_torch; mycelya_torch.RemoteMachine('runpod', 'H100').stop()"
    main, child = pty.openpty()
    try:
        process = subprocess.Popen([sys.executable, "-c", script], stderr=child, env=dict(os.environ))
        os.close(child)
        output = b""
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(60) == 0, output
    finally:
        os.close(main)
        fake.hold_until_polled = False
    text = output.decode(errors="replace")
    assert "\r\x1b[Kstarting machine runpod-" in text and "provisioning (RunPod is placing pod" in text, text
    assert text.endswith("\r\x1b[K"), text[-200:]


def test_the_api_over_https_is_verified(tmp_path):
    # The real API is HTTPS: the plugin verifies its certificate against the
    # system's CA bundle ($CURL_CA_BUNDLE here, the test CA) and refuses others.
    from fakes.runpod_fake import FakeRunPod

    pki = make_test_pki(tmp_path)
    script = (
        "import torch, mycelya_torch\n"
        "with mycelya_torch.RemoteMachine('runpod', 'H100') as m:\n"
        "    assert (torch.ones(3, device=m.device()) * 2).sum().item() == 6\n"
    )
    with FakeRunPod(
        server_binary=server_binary(), entrypoint=ENTRYPOINT, tls=(pki / "server.pem", pki / "server.key")
    ) as https_fake:
        env = dict(os.environ, RUNPOD_API_BASE_URL=https_fake.base_url, RUNPOD_API_KEY=https_fake.api_key)
        trusted = subprocess.run(
            [sys.executable, "-c", script],
            env=dict(env, CURL_CA_BUNDLE=str(pki / "ca.pem")),
            capture_output=True,
        )
        assert trusted.returncode == 0, trusted.stderr.decode()[-2000:]
        untrusted = subprocess.run(
            [sys.executable, "-c", script],
            env=dict(env, CURL_CA_BUNDLE=str(pki / "other.pem")),
            capture_output=True,
        )
        assert untrusted.returncode != 0
        assert "no answer from GET https://127.0.0.1" in untrusted.stderr.decode(), untrusted.stderr.decode()[
            -2000:
        ]
        assert not https_fake.running_pods() and len(https_fake.pods()) == 0


def test_ctrl_c_during_a_start_stops_the_machine(fake):
    # The C++ start cannot be interrupted; the KeyboardInterrupt arrives when
    # it returns, with the machine running: it must not be left billing. The
    # Ctrl-C comes once the pod exists, while each of its starting stages lasts
    # until a poll (500 ms apart) has seen it: the start is still running.
    fake.hold_until_polled = True
    before = [pod["id"] for pod in fake.pods()]

    def interrupt_once_the_pod_exists():
        if wait_until(lambda: [pod["id"] for pod in fake.pods()] != before, 60):
            signal.raise_signal(signal.SIGINT)

    interrupter = threading.Thread(target=interrupt_once_the_pod_exists)
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            mycelya_torch.RemoteMachine("runpod", "H100")
    finally:
        interrupter.join()
        fake.hold_until_polled = False
    assert mycelya_torch.get_all_machines() == []
    assert fake.pods() == []


def test_rate_limits_are_waited_out(fake):
    fake.rate_limit_next = 2
    with mycelya_torch.RemoteMachine("runpod", "L4") as machine:
        _matmul_matches_cpu(machine)
    assert fake.rate_limit_next == 0


def test_server_error_after_create_leaves_one_pod(fake):
    fake.fail_after_create_next = 1
    before = len(_created(fake))
    with mycelya_torch.RemoteMachine("runpod", "H100") as machine:
        assert len(fake.pods()) == 1
        _matmul_matches_cpu(machine)
    assert len(_created(fake)) == before + 1  # found by name, not made twice


def test_never_healthy_terminates_the_pod(fake):
    fake.stuck_provisioning = True
    with pytest.raises(RuntimeError, match="never became healthy in 2 s"):
        mycelya_torch.RemoteMachine("runpod", "H100", start_timeout=2)
    assert fake.pods() == []


def test_error_status_shows_the_log_and_terminates(fake):
    fake.error_on_start = True
    with pytest.raises(RuntimeError, match=r"status ERROR(.|\n)*last log lines(.|\n)*error pulling image"):
        mycelya_torch.RemoteMachine("runpod", "H100")
    assert fake.pods() == []


def test_pause_stops_the_pod_and_resume_reads_the_new_port(fake):
    machine = mycelya_torch.RemoteMachine("runpod", "H100")
    values = torch.randn(50, 20)
    x = values.to(machine.device())
    (pod,) = fake.pods()
    first_port = pod["runtime"]["ports"][0]["public"]
    machine.pause()
    assert wait_until(lambda: fake.pods()[0]["status"] == "EXITED", 15)
    assert not fake.running_pods()

    fake.no_gpu_on_resume = True
    with pytest.raises(RuntimeError, match="cannot start now"):
        machine.resume()
    assert machine.paused
    fake.no_gpu_on_resume = False
    machine.resume()
    torch.testing.assert_close(x.cpu(), values)
    assert fake.pods()[0]["runtime"]["ports"][0]["public"] != first_port
    machine.stop()
    assert fake.pods() == []


def test_resume_right_after_pause_waits_for_the_stop(fake):
    # The stop action is asynchronous: the pod is still RUNNING, its server
    # shutting down, when resume() begins.
    with mycelya_torch.RemoteMachine("runpod", "H100") as machine:
        values = torch.randn(8)
        x = values.to(machine.device())
        machine.pause()
        machine.resume()
        torch.testing.assert_close(x.cpu(), values)


def test_a_vanished_client_lets_the_pod_stop_itself(fake):
    machine = mycelya_torch.RemoteMachine("runpod", "H100", idle_timeout=2)
    values = torch.randn(10)
    x = values.to(machine.device())
    machine.synchronize()
    # No message for 2 s: the server saves, exits, and the pod stops itself.
    assert wait_until(lambda: fake.pods()[0]["status"] == "EXITED", 20), fake.pods()
    with pytest.raises(RuntimeError, match="was lost"):
        x.cpu()
    machine.resume()  # from what the server saved before it exited
    torch.testing.assert_close(x.cpu(), values)
    machine.stop()


def test_a_lost_pod_raises_was_lost(fake):
    machine = mycelya_torch.RemoteMachine("runpod", "H100")
    x = torch.ones(4, device=machine.device())
    assert x.sum().item() == 4
    for pid in fake.container_pids():
        os.killpg(pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="was lost"):
        for _ in range(100):
            (x * 2).sum().item()
    machine.stop()
    assert fake.pods() == []


def test_a_crashed_server_stops_its_pod_instead_of_a_restart_loop(fake):
    machine = mycelya_torch.RemoteMachine("runpod", "H100")
    (container,) = fake.container_pids()
    (server,) = children_named("mycelya-server", parent=container)
    os.kill(server, signal.SIGKILL)
    # The entry point saw its server die without RunPod's stop: it stops the pod.
    assert wait_until(lambda: fake.pods()[0]["status"] == "EXITED", 20), fake.pods()
    assert fake.container_restarts(fake.pods()[0]["id"]) == 0
    machine.stop()


def test_start_shows_what_it_waits_for(fake, capfd):
    # Each status lasts until the plugin's poll has seen it, however late that poll comes.
    fake.hold_until_polled = True
    mycelya_torch.set_logging_level(logging.INFO)
    try:
        mycelya_torch.RemoteMachine("runpod", "H100").stop()
    finally:
        mycelya_torch.set_logging_level(logging.WARNING)
        fake.hold_until_polled = False
    err = capfd.readouterr().err
    for stage in [
        "creating a pod with 1x NVIDIA H100",
        "provisioning",
        "starting the container",
        "connecting to",
    ]:
        assert stage in err
