# SPDX-License-Identifier: AGPL-3.0-or-later
"""Tests of the RunPod fake itself, over plain HTTP (urllib), with mycelya-server as the pod."""

import json
import os
import signal
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from listening_line import LISTENING_PREFIX
from processes import alive

from fakes import ROOT, SERVER, SERVER_BUILT
from fakes.runpod_fake import NO_CAPACITY, NO_GPU_ON_RESUME, FakeRunPod

ENTRYPOINT = os.path.join(ROOT, "deploy", "entrypoint.sh")
H100 = "NVIDIA H100 80GB HBM3"

pytestmark = pytest.mark.skipif(not SERVER_BUILT, reason="mycelya-server is not built")


@pytest.fixture
def fake():
    with FakeRunPod(
        server_binary=SERVER, entrypoint=ENTRYPOINT, provisioning_s=0.05, starting_s=0.05
    ) as fake:
        yield fake


def call(fake, method, path, body=None, key=None, headers=None):
    """(status, headers, parsed JSON body or None) for one request to the fake."""
    request = urllib.request.Request(
        fake.base_url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    if key is not False:
        request.add_header("Authorization", "Bearer " + (key or fake.api_key))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            data = response.read()
            status, reply_headers = response.status, response.headers
    except urllib.error.HTTPError as error:
        data = error.read()
        status, reply_headers = error.code, error.headers
    return status, reply_headers, json.loads(data) if data else None


def pod_body(name="p", **extra):
    body = {
        "name": name,
        "image": "mycelya/server:test",
        "gpu": {"id": H100, "count": 1},
        "cloud": "SECURE",
        "disk": 20,
        "ports": ["50051/tcp"],
        "env": {
            "MYCELYA_TOKEN": "x",
            "MYCELYA_INSECURE": "1",
            "MYCELYA_DEVICES": "cpu",
            "MYCELYA_STATE_DIR": "/workspace/mycelya-state",
        },
        "mounts": {"persistent": {"size": 20, "path": "/workspace"}},
    }
    body.update(extra)
    return body


def create(fake, **extra):
    status, _, pod = call(fake, "POST", "/pods", pod_body(**extra))
    assert status == 201, pod
    return pod


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def get(fake, pod_id, key=None):
    status, _, pod = call(fake, "GET", f"/pods/{pod_id}", key=key)
    assert status == 200, pod
    return pod


def ready_port(pod):
    """The tcp entry for 50051 once it has public and ip, else None."""
    if pod["status"] != "RUNNING" or not pod["runtime"]:
        return None
    for entry in pod["runtime"]["ports"]:
        if entry["private"] == 50051 and entry["type"] == "tcp" and entry["public"] and entry["ip"]:
            return entry
    return None


def wait_running(fake, pod_id):
    return wait_for(lambda: ready_port(get(fake, pod_id)))


def environ(pid):
    with open(f"/proc/{pid}/environ", "rb") as file:
        return dict(item.split("=", 1) for item in file.read().decode().split("\0") if "=" in item)


def events(fake, pod_id, query="", headers=None, until=None):
    """The SSE events of GET /pods/{id}/logs: to the end of the stream, or (a live pod's
    stream does not end) until until(events) holds."""
    request = urllib.request.Request(fake.base_url + f"/pods/{pod_id}/logs{query}", headers=headers or {})
    request.add_header("Authorization", "Bearer " + fake.api_key)
    found, fields = [], {}
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if "data" in fields:
                found.append((fields["id"], json.loads(fields["data"])))
            fields = {}
            if until is not None and until(found):
                break
    return found


def assert_problem(status, headers, body, code):
    assert status == code, body
    assert headers["Content-Type"] == "application/problem+json"
    assert body["status"] == code and body["title"] and body["detail"]


def test_auth(fake):
    assert_problem(*call(fake, "GET", "/pods", key=False), 401)
    assert_problem(*call(fake, "GET", "/pods", key="rp_wrong"), 401)
    assert_problem(*call(fake, "GET", "/pods", headers={"Authorization": "Basic eDp5"}, key=False), 401)
    assert call(fake, "GET", "/pods")[0] == 200
    assert fake.requests()[0][:2] == ("GET", "/v2/pods")


def test_unknown_paths_and_methods(fake):
    assert_problem(*call(fake, "GET", "/templates"), 404)
    assert_problem(*call(fake, "GET", "/pods/abc/nothing"), 404)
    assert_problem(*call(fake, "GET", "/pods/abc"), 404)
    status, headers, body = call(fake, "PUT", "/pods")
    assert_problem(status, headers, body, 405)
    assert headers["Allow"] == "GET, POST"


def test_catalog(fake):
    status, _, body = call(fake, "GET", "/catalog/gpus")
    assert status == 200 and list(body) == ["gpus"]
    by_id = {gpu["id"]: gpu for gpu in body["gpus"]}
    for ident in (
        "NVIDIA H100 80GB HBM3",
        "NVIDIA H100 PCIe",
        "NVIDIA H100 NVL",
        "NVIDIA H200",
        "NVIDIA H200 NVL",
        "NVIDIA B200",
        "NVIDIA L4",
        "NVIDIA L40S",
        "NVIDIA A100 80GB PCIe",
        "NVIDIA A100-SXM4-80GB",
        "NVIDIA GeForce RTX 4090",
    ):
        assert ident in by_id
    h100 = by_id[H100]
    assert {
        "id",
        "name",
        "pool",
        "manufacturer",
        "memory",
        "secure",
        "community",
        "price",
        "maxCount",
    } <= set(h100)
    assert h100["memory"] == 80 and "availability" not in h100
    status, _, body = call(fake, "GET", "/catalog/gpus?include=AVAILABILITY&product=POD&count=1&cloud=SECURE")
    assert status == 200
    h100 = {gpu["id"]: gpu for gpu in body["gpus"]}[H100]
    assert h100["availability"] in ("LOW", "MEDIUM", "HIGH") and h100["dataCenters"]
    assert h100["cudaVersions"][0]["available"] is True
    status, _, gpu = call(fake, "GET", "/catalog/gpus/" + urllib.parse.quote(H100))
    assert status == 200 and gpu["id"] == H100
    assert_problem(*call(fake, "GET", "/catalog/gpus/" + urllib.parse.quote("NVIDIA A10G")), 404)
    assert_problem(*call(fake, "GET", "/catalog/gpus?include=AVAILABILITY"), 400)
    assert_problem(*call(fake, "GET", "/catalog/gpus?product=POD"), 400)
    assert_problem(*call(fake, "GET", "/catalog/gpus?count=2"), 400)
    assert_problem(*call(fake, "GET", "/catalog/gpus?include=AVAILABILITY&product=POD&count=0"), 422)
    assert_problem(*call(fake, "GET", "/catalog/gpus?include=AVAILABILITY&product=POD&cloud=MOON"), 422)
    # More GPUs than the largest machine holds: none available.
    status, _, body = call(fake, "GET", "/catalog/gpus?include=AVAILABILITY&product=POD&count=9")
    h100 = {gpu["id"]: gpu for gpu in body["gpus"]}[H100]
    assert h100["availability"] == "NONE" and "dataCenters" not in h100


@pytest.mark.parametrize(
    "change, code, needle",
    [
        ({"bogus": 1}, 422, "'bogus'"),
        ({"disk": "50"}, 422, "$.disk"),
        ({"disk": 50.0}, 422, "$.disk"),
        ({"name": ""}, 422, "$.name"),
        ({"env": {"A": 1}}, 422, "$.env.A"),
        ({"ports": "50051/tcp"}, 422, "$.ports"),
        ({"gpu": {"id": H100, "count": 0}}, 422, "$.gpu.count"),
        ({"gpu": {"id": H100, "kind": "x"}}, 422, "'kind'"),
        ({"cloud": "PRIVATE"}, 422, "$.cloud"),
        ({"mounts": {"persistent": {"size": 20}}}, 422, "'path'"),
        ({"dockerStartCmd": ["x"]}, 422, "'dockerStartCmd'"),
        ({"gpu": {"id": "NVIDIA A10G"}}, 400, "A10G"),
        ({"gpu": {"id": H100, "count": 9}}, 400, "exceeds"),
        ({"ports": ["50051"]}, 400, "50051"),
        ({"cpu": {"id": "cpu5c", "vcpuCount": 4}}, 400, "exactly one"),
        ({"dataCenterIds": ["MARS-1"]}, 400, "MARS-1"),
    ],
)
def test_create_validation(fake, change, code, needle):
    status, headers, body = call(fake, "POST", "/pods", pod_body(**change))
    assert_problem(status, headers, body, code)
    assert needle in json.dumps(body)
    if code == 422:
        assert body["errors"]
    assert fake.pods() == []


def test_create_needs_name_and_image(fake):
    body = pod_body()
    del body["name"], body["image"]
    status, headers, problem = call(fake, "POST", "/pods", body)
    assert_problem(status, headers, problem, 422)
    assert any("'name'" in error for error in problem["errors"])
    assert any("'image'" in error for error in problem["errors"])


def test_lifecycle(fake):
    status, _, pod = call(fake, "POST", "/pods", pod_body("life"))
    assert status == 201
    assert pod["status"] == "PROVISIONING" and pod["runtime"] == {} and pod["startedAt"] is None
    assert pod["actions"] == ["stop", "terminate"]
    assert get(fake, pod["id"])["runtime"] is None
    entry = wait_running(fake, pod["id"])
    assert entry["ip"] == "127.0.0.1"
    socket.create_connection((entry["ip"], entry["public"]), timeout=2).close()
    running = get(fake, pod["id"])
    assert running["actions"] == ["stop", "restart", "terminate"] and running["startedAt"]
    assert running["cost"] > 0
    [pid] = fake.container_pids()
    env = environ(pid)
    assert env["RUNPOD_POD_ID"] == pod["id"] and env["RUNPOD_PUBLIC_IP"] == "127.0.0.1"
    assert env["RUNPOD_TCP_PORT_50051"] == str(entry["public"]) == env["MYCELYA_PORT"]
    assert env["RUNPOD_API_BASE_URL"] == fake.base_url and env["RUNPOD_API_KEY"].startswith("rpa_")
    state_dir = env["MYCELYA_STATE_DIR"]
    assert state_dir.startswith(fake.workdir) and state_dir.endswith("/mycelya-state")
    with open(os.path.join(os.path.dirname(state_dir), "kept"), "w") as file:
        file.write("x")
    assert [p["id"] for p in fake.running_pods()] == [pod["id"]]

    assert_problem(*call(fake, "POST", f"/pods/{pod['id']}/action", {"action": "start"}), 409)
    assert_problem(*call(fake, "POST", f"/pods/{pod['id']}/action", {"action": "fly"}), 422)
    assert_problem(*call(fake, "POST", f"/pods/{pod['id']}/action", {"action": "stop", "x": 1}), 422)

    status, _, body = call(fake, "POST", f"/pods/{pod['id']}/action", {"action": "stop"})
    assert status == 200 and body["id"] == pod["id"]
    exited = wait_for(lambda: (p := get(fake, pod["id"]))["status"] == "EXITED" and p)
    assert exited["runtime"] is None and exited["cost"] == 0.0 and exited["actions"] == ["start", "terminate"]
    assert not alive(pid) and fake.container_pids() == [] and fake.running_pods() == []

    lines = [data["line"] for _, data in events(fake, pod["id"], "?source=container")]
    assert any(LISTENING_PREFIX in line for line in lines)
    assert all(data["source"] == "system" for _, data in events(fake, pod["id"], "?source=system"))
    everything = events(fake, pod["id"], "?tail=5000")
    assert len(events(fake, pod["id"], "?tail=2")) == 2
    assert events(fake, pod["id"], headers={"Last-Event-ID": everything[-2][0]}) == everything[-1:]
    assert_problem(*call(fake, "GET", f"/pods/{pod['id']}/logs?tail=-1"), 422)

    status, _, body = call(fake, "POST", f"/pods/{pod['id']}/action", {"action": "start"})
    assert status == 200 and body["status"] == "STARTING"
    again = wait_running(fake, pod["id"])
    assert again["public"] != entry["public"]
    [pid2] = fake.container_pids()
    assert os.path.exists(os.path.join(os.path.dirname(environ(pid2)["MYCELYA_STATE_DIR"]), "kept"))

    status, _, body = call(fake, "DELETE", f"/pods/{pod['id']}")
    assert status == 204 and body is None
    assert_problem(*call(fake, "GET", f"/pods/{pod['id']}"), 404)
    assert_problem(*call(fake, "DELETE", f"/pods/{pod['id']}"), 404)
    assert call(fake, "GET", "/pods")[2] == {"pods": []}
    wait_for(lambda: not alive(pid2))
    wait_for(lambda: not os.path.exists(os.path.join(fake.workdir, pod["id"])))


def test_restart_action_and_crash_restart(fake):
    pod = create(fake)
    first = wait_running(fake, pod["id"])
    [pid] = fake.container_pids()
    os.kill(pid, signal.SIGKILL)  # the container dies on its own: RunPod restarts it
    second = wait_for(
        lambda: (e := ready_port(get(fake, pod["id"]))) and e["public"] != first["public"] and e
    )
    assert fake.container_restarts(pod["id"]) == 1
    events(
        fake,
        pod["id"],
        "?source=system",
        until=lambda found: any("exited with code" in d["line"] for _, d in found),
    )
    status, _, body = call(fake, "POST", f"/pods/{pod['id']}/action", {"action": "restart"})
    assert status == 200 and body["status"] == "STARTING" and body["runtime"] is None
    third = wait_running(fake, pod["id"])
    assert third["public"] != second["public"]
    status, _, _ = call(fake, "POST", f"/pods/{pod['id']}/action", {"action": "terminate"})
    assert status == 204
    wait_for(lambda: fake.container_pids() == [])


def test_pod_scoped_key(fake):
    fake.stuck_provisioning = True
    other = create(fake, name="other")
    fake.stuck_provisioning = False
    pod = create(fake, name="mine")
    wait_running(fake, pod["id"])
    [pid] = fake.container_pids()
    key = environ(pid)["RUNPOD_API_KEY"]
    assert key == fake.pod_api_key(pod["id"])
    assert get(fake, pod["id"], key=key)["id"] == pod["id"]
    assert_problem(*call(fake, "GET", "/pods", key=key), 403)
    assert_problem(*call(fake, "GET", "/catalog/gpus", key=key), 403)
    assert_problem(*call(fake, "POST", "/pods", pod_body(), key=key), 403)
    assert_problem(*call(fake, "GET", f"/pods/{other['id']}", key=key), 403)
    assert_problem(*call(fake, "POST", f"/pods/{other['id']}/action", {"action": "stop"}, key=key), 403)
    status, _, _ = call(fake, "POST", f"/pods/{pod['id']}/action", {"action": "stop"}, key=key)
    assert status == 200
    wait_for(lambda: get(fake, pod["id"])["status"] == "EXITED")
    assert get(fake, other["id"])["status"] == "PROVISIONING"


def test_no_capacity(fake):
    fake.no_capacity_gpu_ids.add(H100)
    status, headers, body = call(fake, "POST", "/pods", pod_body())
    assert_problem(status, headers, body, 400)
    assert body["detail"] == NO_CAPACITY and "instances available" in body["detail"]
    assert fake.pods() == []
    _, _, catalog = call(fake, "GET", "/catalog/gpus?include=AVAILABILITY&product=POD")
    assert {gpu["id"]: gpu for gpu in catalog["gpus"]}[H100]["availability"] == "NONE"
    status, _, _ = call(fake, "POST", "/pods", pod_body(gpu={"id": "NVIDIA H200", "count": 1}))
    assert status == 201


def test_rate_limit(fake):
    fake.rate_limit_next = 2
    for _ in range(2):
        status, headers, body = call(fake, "GET", "/pods")
        assert_problem(status, headers, body, 429)
        assert headers["Retry-After"] == "1"
    assert call(fake, "GET", "/pods")[0] == 200


def test_fail_after_create(fake):
    fake.stuck_provisioning = True
    fake.fail_after_create_next = 1
    status, headers, body = call(fake, "POST", "/pods", pod_body("lost-reply"))
    assert_problem(status, headers, body, 500)
    _, _, listing = call(fake, "GET", "/pods")
    assert [p["name"] for p in listing["pods"]] == ["lost-reply"]
    assert call(fake, "POST", "/pods", pod_body("second"))[0] == 201


def test_stuck_provisioning(fake):
    fake.stuck_provisioning = True
    pod = create(fake)
    time.sleep(0.4)
    stuck = get(fake, pod["id"])
    assert stuck["status"] == "PROVISIONING" and stuck["runtime"] is None
    assert fake.container_pids() == []
    status, _, body = call(fake, "POST", f"/pods/{pod['id']}/action", {"action": "stop"})
    assert status == 200 and body["status"] == "EXITED"


def test_error_on_start(fake):
    fake.error_on_start = True
    pod = create(fake)
    errored = wait_for(lambda: (p := get(fake, pod["id"]))["status"] == "ERROR" and p)
    assert errored["actions"] == ["start", "terminate"] and errored["runtime"] is None
    assert fake.container_pids() == []
    lines = [data["line"] for _, data in events(fake, pod["id"])]
    assert any("manifest unknown" in line for line in lines)
    fake.error_on_start = False
    assert call(fake, "POST", f"/pods/{pod['id']}/action", {"action": "start"})[0] == 200
    wait_running(fake, pod["id"])


def test_no_gpu_on_resume(fake):
    pod = create(fake)
    wait_running(fake, pod["id"])
    call(fake, "POST", f"/pods/{pod['id']}/action", {"action": "stop"})
    wait_for(lambda: get(fake, pod["id"])["status"] == "EXITED")
    fake.no_gpu_on_resume = True
    status, headers, body = call(fake, "POST", f"/pods/{pod['id']}/action", {"action": "start"})
    assert_problem(status, headers, body, 400)
    assert body["detail"] == NO_GPU_ON_RESUME
    assert get(fake, pod["id"])["status"] == "EXITED"
    fake.no_gpu_on_resume = False
    assert call(fake, "POST", f"/pods/{pod['id']}/action", {"action": "start"})[0] == 200
    wait_running(fake, pod["id"])


def test_close_leaves_no_process():
    fake = FakeRunPod(server_binary=SERVER, entrypoint=ENTRYPOINT, provisioning_s=0.01, starting_s=0.01)
    pods = [create(fake, name=f"p{i}") for i in range(2)]
    for pod in pods:
        wait_running(fake, pod["id"])
    pids = fake.container_pids()
    assert len(pids) == 2
    port, workdir = fake.port, fake.workdir
    fake.close()
    assert not any(alive(pid) for pid in pids)
    assert not os.path.exists(workdir)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
