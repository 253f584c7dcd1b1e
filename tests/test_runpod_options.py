# SPDX-License-Identifier: AGPL-3.0-or-later
"""The runpod provider's options (README's runpod section) as they reach RunPod's API
(tests/fakes/runpod_api.md): image=, disk=, volume= and cloud= in the body of the pod's
create call, and in the pod RunPod then describes."""

import pytest
import torch
from runpod_fixtures import start_fake_runpod, wait_until

import mycelya_torch


@pytest.fixture(scope="module")
def fake():
    fake = start_fake_runpod()
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def _no_pod_outlives_its_test(fake):
    yield
    for machine in mycelya_torch.get_all_machines():
        machine.stop()
    assert wait_until(lambda: not fake.running_pods(), 15), fake.pods()


def _created(fake):
    """The bodies of the create-pod calls RunPod received, in order."""
    return [body for method, path, body in fake.requests() if method == "POST" and path == "/v2/pods"]


def _runs_ops(machine):
    a = torch.randn(16, 8)
    torch.testing.assert_close((a.to(machine.device()) @ a.T.to(machine.device())).cpu(), a @ a.T)


def test_defaults_reach_runpod(fake):
    before = len(_created(fake))
    with mycelya_torch.RemoteMachine("runpod", "H100") as machine:
        _runs_ops(machine)
        body = _created(fake)[before]
        assert body["image"] == "ghcr.io/mycelya-torch/mycelya-server:0.1.0"
        assert body["disk"] == 20
        assert body["mounts"] == {"persistent": {"size": 20, "path": "/workspace"}}
        assert body.get("cloud", "SECURE") == "SECURE"


def test_image_disk_volume_and_community_cloud_reach_runpod(fake):
    before = len(_created(fake))
    image = "ghcr.io/you/mycelya-server:test"
    with mycelya_torch.RemoteMachine(
        "runpod", "H100", image=image, disk=35, volume=12, cloud="COMMUNITY"
    ) as machine:
        _runs_ops(machine)
        (body,) = _created(fake)[before:]
        assert body["image"] == image
        assert body["disk"] == 35
        assert body["mounts"] == {"persistent": {"size": 12, "path": "/workspace"}}
        assert body["cloud"] == "COMMUNITY"
        # RunPod took them as given: the pod it describes has them too.
        (pod,) = fake.pods()
        assert (pod["image"], pod["disk"], pod["cloud"]) == (image, 35, "COMMUNITY")
        assert pod["mounts"]["persistent"]["size"] == 12
