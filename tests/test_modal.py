# SPDX-License-Identifier: AGPL-3.0-or-later
"""The modal provider: Modal's pinned SDK (driven by _modal_driver.py) against the loopback
fake of Modal's API (tests/fakes/modal_fake.py), whose image builds install the wheel
(//python:wheel) for real; each sandbox runs the mycelya-server its image installed, behind
a TLS terminator that advertises h2."""

import logging
import os
import subprocess
import sys

import pytest
import torch
from fakes import WHEEL
from fakes.modal_fake import FakeModal
from runpod_fixtures import wait_until
from server_process import server_binary

import mycelya_torch


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    # Images built from the wheel run the server they installed; a registry image (image=),
    # which the fake cannot pull, runs this build's server.
    fake = FakeModal(server_binary=server_binary())
    saved = {name: os.environ.get(name) for name in fake.env()}
    os.environ.update(fake.env())
    yield fake
    fake.close()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def wheel(fake):
    """The wheel the machines' images install. Its image is built here, up front (torch's
    layer: about 50 s on this machine under load), so that the tests' start_timeouts time a
    start, not the build."""
    _machine(fake, WHEEL, "H100").stop()
    return WHEEL


@pytest.fixture(autouse=True)
def _no_sandbox_outlives_its_test(fake):
    fake.refuse_tokens = fake.no_capacity = fake.never_healthy = False
    yield
    for machine in mycelya_torch.get_all_machines():
        machine.stop()
    assert wait_until(lambda: not fake.running_sandboxes(), 15), fake.running_sandboxes()


def _machine(fake, wheel, *args, **options):
    return mycelya_torch.RemoteMachine("modal", *args, wheel=wheel, tls_ca=fake.ca_pem_path, **options)


def _matmul_matches_cpu(machine):
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    remote = a.to(machine.device()) @ b.to(machine.device())
    torch.testing.assert_close(remote.cpu(), a @ b)


def test_a_gpu_sandbox_runs_ops_and_stop_terminates_it(fake, wheel):
    with _machine(fake, wheel, "H100", gpu_count=2) as machine:
        _matmul_matches_cpu(machine)
        (sandbox,) = fake.running_sandboxes()
        assert sandbox["gpu"] == "H100:2"
        assert sandbox["h2_ports"] == [50051]
        assert "/mycelya-state" in sandbox["volumes"]
        commands = " ".join(sandbox["image_commands"])
        assert "torch==2.13.0" in commands
        assert (
            any(os.path.basename(wheel) in str(f) for f in sandbox["image_files"])
            or os.path.basename(wheel) in commands
        )
        # Its server is the one the image's build installed from the wheel.
        server = os.path.realpath(f"/proc/{sandbox['pid']}/exe")
        assert server.startswith(sandbox["image_root"] + "/"), server
        assert server.endswith("/site-packages/mycelya_torch/mycelya-server"), server
    assert not fake.running_sandboxes()


def test_a_wheel_that_does_not_install_fails_the_start_with_the_build_log(fake, wheel, tmp_path):
    garbage = tmp_path / os.path.basename(wheel)
    garbage.write_bytes(b"not a real wheel")
    with pytest.raises(RuntimeError, match=r"(?s)Image build for im-\w+ failed.*pip install.*is invalid"):
        _machine(fake, str(garbage), "H100")
    assert not fake.running_sandboxes()


def test_a10g_is_modals_a10(fake, wheel):
    with _machine(fake, wheel, "A10G") as machine:
        _matmul_matches_cpu(machine)
        assert fake.running_sandboxes()[0]["gpu"] == "A10:1"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"wheel": "/nonexistent.whl"}, "cannot be read"),
        ({"timeout": 90000}, "at most 86400"),
        ({"region": "eu"}, "has no option 'region'"),
    ],
)
def test_bad_arguments_are_value_errors(fake, wheel, options, message, monkeypatch):
    monkeypatch.delenv("MYCELYA_WHEEL", raising=False)
    arguments = {"wheel": wheel, **options}
    with pytest.raises(ValueError, match=message):
        mycelya_torch.RemoteMachine("modal", "H100", start=False, **arguments)


def test_a_source_tree_client_needs_a_wheel(fake, monkeypatch):
    # This package runs from the build, not from a pip install: the driver
    # has no installed wheel to pack (tests/test_wheel.py packs an installed one).
    monkeypatch.delenv("MYCELYA_WHEEL", raising=False)
    with pytest.raises(RuntimeError, match="not installed from a wheel.*pass wheel="):
        mycelya_torch.RemoteMachine("modal", "H100", tls_ca=fake.ca_pem_path)


def test_refused_and_missing_credentials(fake, wheel, monkeypatch):
    fake.refuse_tokens = True
    with pytest.raises(RuntimeError, match="modal: .*(token|credentials)"):
        _machine(fake, wheel, "H100")
    fake.refuse_tokens = False
    monkeypatch.delenv("MODAL_TOKEN_ID")
    monkeypatch.delenv("MODAL_TOKEN_SECRET")
    with pytest.raises(RuntimeError, match="modal token new"):
        _machine(fake, wheel, "H100")


def test_no_capacity_says_so(fake, wheel):
    fake.no_capacity = True
    # The driver waits 3/4 of start_timeout for capacity; the rest is its own
    # start (Python and Modal's SDK), which takes seconds on a busy machine.
    with pytest.raises(RuntimeError, match="no H100 is available on Modal now"):
        _machine(fake, wheel, "H100", start_timeout=30)


def test_never_healthy_shows_the_log_and_terminates(fake, wheel):
    fake.never_healthy = True
    with pytest.raises(RuntimeError, match="never became healthy(.|\n)*last log lines(.|\n)*libcudart"):
        _machine(fake, wheel, "H100", start_timeout=8)
    assert not fake.running_sandboxes()


def test_pause_saves_to_the_volume_and_resume_starts_a_new_sandbox(fake, wheel):
    machine = _machine(fake, wheel, "H100")
    values = torch.randn(30, 3)
    x = values.to(machine.device())
    (first,) = fake.running_sandboxes()
    machine.pause()
    assert not fake.running_sandboxes()
    # Paused: the tensors are on the Volume, under the machine's state key.
    (folder,) = os.listdir(fake.volume_path("mycelya-state"))
    assert len(folder) == 64
    machine.resume()
    (second,) = fake.running_sandboxes()
    assert second["id"] != first["id"]
    torch.testing.assert_close(x.cpu(), values)
    machine.pause()
    assert os.listdir(fake.volume_path("mycelya-state")) == [folder]
    machine.stop()
    # stop() drops what the paused machine saved on the Volume.
    assert os.listdir(fake.volume_path("mycelya-state")) == []


def test_a_lost_sandbox_raises_was_lost(fake, wheel):
    machine = _machine(fake, wheel, "H100")
    x = torch.ones(4, device=machine.device())
    assert x.sum().item() == 4
    (sandbox,) = fake.running_sandboxes()
    fake.kill_sandbox(sandbox["id"])
    with pytest.raises(RuntimeError, match="was lost"):
        for _ in range(100):
            (x * 2).sum().item()
    machine.stop()


def test_start_shows_what_it_waits_for(fake, wheel, capfd):
    mycelya_torch.set_logging_level(logging.INFO)
    try:
        _machine(fake, wheel, "H100").stop()
    finally:
        mycelya_torch.set_logging_level(logging.WARNING)
    err = capfd.readouterr().err
    for stage in ["building the image", "scheduling the sandbox", "waiting for mycelya-server"]:
        assert stage in err


def test_app_volume_and_registry_image_reach_modal(fake, wheel):
    image = "ghcr.io/you/mycelya-server:0.1.0"
    # image= replaces the built image, so no wheel is needed (nor added).
    with mycelya_torch.RemoteMachine(
        "modal", "H100", image=image, app="my-app", volume="my-state", tls_ca=fake.ca_pem_path
    ) as machine:
        _matmul_matches_cpu(machine)
        (sandbox,) = fake.running_sandboxes()
        assert sandbox["app_id"] == fake.apps()["my-app"]
        assert sandbox["volumes"] == {"/mycelya-state": "my-state"}
        assert sandbox["image_commands"][0] == f"FROM {image}"
        assert sandbox["image_files"] == []
        assert not any("torch==" in command for command in sandbox["image_commands"])
        machine.pause()
        # Paused: the tensors went to the named volume, not the default one.
        assert len(os.listdir(fake.volume_path("my-state"))) == 1
        assert fake.volume_path("mycelya-state") is None or not os.listdir(fake.volume_path("mycelya-state"))
        machine.resume()
        _matmul_matches_cpu(machine)


_SYSTEM_ROOTS_CLIENT = """
import sys, torch, mycelya_torch
with mycelya_torch.RemoteMachine("modal", "H100", wheel=sys.argv[1]) as machine:
    a = torch.arange(6.0)
    torch.testing.assert_close((a.to(machine.device()) * 2).cpu(), a * 2)
print("ran on the sandbox")
"""


def test_the_tunnel_is_verified_against_the_systems_roots(fake, wheel):
    """Without tls_ca= the client verifies the tunnel's certificate with gRPC's default roots:
    the system's, which GRPC_DEFAULT_SSL_ROOTS_FILE_PATH replaces. The fake's certificate,
    signed by a CA of its own, is refused with the system's roots and accepted once that CA
    is the default roots. gRPC reads the default roots once per process, so the accepting
    client is a process of its own."""
    with pytest.raises(RuntimeError, match="never became healthy.*over TLS"):
        mycelya_torch.RemoteMachine("modal", "H100", wheel=wheel, start_timeout=10)
    assert not fake.running_sandboxes()
    env = dict(os.environ, GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=fake.ca_pem_path)
    child = subprocess.run(
        [sys.executable, "-c", _SYSTEM_ROOTS_CLIENT, wheel],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr
    assert "ran on the sandbox" in child.stdout
