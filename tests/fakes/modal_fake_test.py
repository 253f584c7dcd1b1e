# SPDX-License-Identifier: AGPL-3.0-or-later
"""Tests of the Modal fake and of the provider's Modal driver together: the driver runs the
real, pinned Modal SDK against the fake, and mycelya-server runs as the sandbox."""

import importlib.util
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest
from listening_line import LISTENING_PREFIX

from fakes import ROOT, SERVER, SERVER_BUILT, WHEEL
from fakes.modal_fake import FakeModal

DRIVER = os.path.join(ROOT, "python", "mycelya_torch", "_modal_driver.py")
STATE_KEY = "ab" * 32  # a 64-hex state key
SERVE = 'exec mycelya-server --listen "0.0.0.0:${MYCELYA_PORT}" --insecure --devices=cpu'
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"

pytestmark = pytest.mark.skipif(
    not SERVER_BUILT or (WHEEL is None and "TEST_SRCDIR" not in os.environ),
    reason="mycelya-server or the wheel (bazel build //python:wheel) is not built",
)


@pytest.fixture(scope="module")
def image_cache(tmp_path_factory):
    """One image cache for the module's fakes, as Modal's workspace keeps images between apps:
    torch's layer is installed once, not once a test. The default image is built here, up
    front, so that the tests' short waits time a start, not a build."""
    folder = str(tmp_path_factory.mktemp("modal-images"))
    with FakeModal(server_binary=SERVER, image_cache=folder, schedule_s=0.1) as fake:
        start(fake)
    return folder


@pytest.fixture
def fake(image_cache):
    with FakeModal(server_binary=SERVER, image_cache=image_cache, schedule_s=0.1) as fake:
        yield fake


@pytest.fixture
def wheel():
    # The real wheel: the image's build installs it. At 13 MB it is over the SDK's 4 MiB
    # limit for inline uploads, so it goes through a blob upload.
    assert os.path.getsize(WHEEL) > 4 * 1024 * 1024
    return WHEEL


def base_env():
    """This process's environment without any Modal setting (a developer's own token included)."""
    return {key: value for key, value in os.environ.items() if not key.startswith("MODAL_")}


# A start that builds torch's layer took 52 s on this machine under load; 6x that.
def driver(command, request, env, timeout=300):
    """Runs the driver: (exit status, its JSON lines, stderr)."""
    proc = subprocess.run(
        [sys.executable, DRIVER, command],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return proc.returncode, lines, proc.stderr


def start_request(wheel=WHEEL, command=SERVE, **extra):
    return {
        "app": "mycelya-torch",
        "gpu": "H100:2",
        "python_version": "3.11",
        "torch_version": "2.13.0",
        "wheel": wheel,
        "image": None,
        "packages": [],
        "env": {"MYCELYA_TOKEN": "test-token"},
        "command": ["sh", "-c", command],
        "port": 50051,
        "timeout_s": 600,
        "volume": "mycelya-state",
        "volume_mount": "/mycelya-state",
        **extra,
    }


def start(fake, **extra):
    status, lines, stderr = driver("start", start_request(**extra), {**base_env(), **fake.env()})
    assert status == 0, (lines, stderr)
    return lines, lines[-1]["ok"]


def h2_settings(host, port, cafile):
    """TLS to the tunnel, ALPN h2, HTTP/2 preface: the first frame's type, or None on EOF."""
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            assert tls.selected_alpn_protocol() == "h2"
            tls.sendall(H2_PREFACE + H2_EMPTY_SETTINGS)
            header = b""
            while len(header) < 9:
                chunk = tls.recv(9 - len(header))
                if not chunk:
                    return None
                header += chunk
            return header[3]


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_start_serves_through_tls_tunnel_then_terminate(fake, wheel):
    lines, ok = start(fake, wheel=wheel)
    assert [line.get("stage") for line in lines[:-1]] == [
        "building the image",
        "scheduling the sandbox",
        "waiting for the tunnel",
    ]
    assert lines[2]["sandbox_id"] == ok["sandbox_id"]
    assert ok["host"] == "localhost" and isinstance(ok["port"], int)

    # The server inside answers through the tunnel: TLS with the test CA, ALPN h2, and its
    # first HTTP/2 frame is SETTINGS (type 4).
    wait_for(lambda: h2_settings(ok["host"], ok["port"], fake.ca_pem_path) == 4, what="the server's SETTINGS")

    [sandbox] = fake.running_sandboxes()
    assert sandbox["id"] == ok["sandbox_id"]
    assert sandbox["gpu"] == "H100:2"
    assert sandbox["env"] == {"MYCELYA_TOKEN": "test-token"}
    assert sandbox["command"] == ["sh", "-c", SERVE]
    assert sandbox["h2_ports"] == [50051]
    assert sandbox["volumes"] == {"/mycelya-state": "mycelya-state"}
    assert sandbox["timeout_s"] == 600
    commands = sandbox["image_commands"]
    assert commands[0].startswith("FROM python:3.11")
    assert "RUN python -m pip install torch==2.13.0" in commands
    inside = "/opt/mycelya/" + os.path.basename(wheel)
    assert commands[-1] == f"RUN python -m pip install {inside}"
    [added] = sandbox["image_files"]
    assert added["filename"] == inside
    with open(wheel, "rb") as original, open(added["path"], "rb") as copied:
        assert original.read() == copied.read()
    # The sandbox runs the server its image's build installed from the wheel, not SERVER.
    server = os.path.realpath(f"/proc/{sandbox['pid']}/exe")
    assert server.startswith(sandbox["image_root"] + "/"), server
    assert server.endswith("/site-packages/mycelya_torch/mycelya-server"), server
    assert "BlobCreate" in fake.calls()
    assert fake.unimplemented_calls() == []

    env = {**base_env(), **fake.env()}
    status, lines, _ = driver("logs", {"sandbox_id": ok["sandbox_id"], "lines": 30}, env)
    assert status == 0
    assert LISTENING_PREFIX in lines[-1]["ok"]["log"]

    status, lines, _ = driver("terminate", {"sandbox_id": ok["sandbox_id"]}, env)
    assert (status, lines) == (0, [{"ok": {"finished": True}}])
    assert not alive(sandbox["pid"])
    assert fake.running_sandboxes() == []
    [sandbox] = fake.sandboxes()
    assert sandbox["status"] == "terminated" and sandbox["result"]["status"] == "terminated"
    with pytest.raises(OSError):
        h2_settings(ok["host"], ok["port"], fake.ca_pem_path)

    # Terminating again, or a sandbox Modal never heard of, is fine.
    assert driver("terminate", {"sandbox_id": ok["sandbox_id"]}, env)[:2] == (0, [{"ok": {"finished": True}}])
    unknown = {"sandbox_id": "sb-" + "x" * 22}
    assert driver("terminate", unknown, env)[:2] == (0, [{"ok": {"finished": True}}])
    assert driver("logs", {**unknown, "lines": 5}, env)[:2] == (0, [{"ok": {"log": ""}}])
    assert fake.unimplemented_calls() == []


def test_a_second_start_reuses_the_built_image(fake, wheel):
    start(fake, wheel=wheel)
    built = len(fake.images())
    joins = fake.calls().count("ImageJoinStreaming")
    start(fake, wheel=wheel)
    assert len(fake.images()) == built
    assert fake.calls().count("ImageJoinStreaming") == joins  # cache hits: no build to wait for
    assert len(fake.running_sandboxes()) == 2


def test_ready_image_skips_torch_and_cpu_sandbox(fake):
    _, ok = start(
        fake, image="ghcr.io/example/mycelya-server:1.0", gpu=None, packages=["six==1.17.0"], wheel=None
    )
    [sandbox] = fake.sandboxes()
    assert sandbox["gpu"] is None
    assert sandbox["image_commands"][0] == "FROM ghcr.io/example/mycelya-server:1.0"
    assert not any("torch" in command for command in sandbox["image_commands"])
    assert "RUN python -m pip install six==1.17.0" in sandbox["image_commands"]
    assert sandbox["image_files"] == []
    # The package was installed for real; the registry image itself is opaque to the fake,
    # which gives it SERVER as its mycelya-server.
    site = os.path.join(sandbox["image_root"], "usr", "local", "lib", "python3.11", "site-packages")
    assert os.path.isdir(os.path.join(site, "six-1.17.0.dist-info"))
    wait_for(lambda: h2_settings(ok["host"], ok["port"], fake.ca_pem_path) == 4, what="the server's SETTINGS")
    assert os.path.realpath(f"/proc/{sandbox['pid']}/exe") == os.path.realpath(SERVER)


def test_a_wheel_of_garbage_bytes_fails_the_build_with_its_log(fake, tmp_path):
    garbage = tmp_path / os.path.basename(WHEEL)
    garbage.write_bytes(b"not a real wheel")
    status, lines, _ = driver("start", start_request(wheel=str(garbage)), {**base_env(), **fake.env()})
    assert status == 1
    error = lines[-1]
    assert error["kind"] == "other"
    assert re.search(r"Image build for im-\w+ failed", error["error"]), error
    assert f"`RUN python -m pip install /opt/mycelya/{garbage.name}` exited with status 1" in error["error"]
    assert "is invalid" in error["error"]  # pip's own words, from the build log
    [failed] = [image for image in fake.images() if image["state"] == "failed"]
    assert any("is invalid" in line for line in failed["log"])
    assert fake.sandboxes() == []


def test_volume_paths_persist_and_discard_removes_the_folder(fake):
    keep = f"mkdir -p /mycelya-state/{STATE_KEY} && echo saved > /mycelya-state/{STATE_KEY}/state && {SERVE}"
    _, ok = start(fake, command=keep)
    folder = os.path.join(fake.volume_path("mycelya-state"), STATE_KEY)
    wait_for(lambda: os.path.exists(os.path.join(folder, "state")), what="the state file")
    env = {**base_env(), **fake.env()}
    assert driver("terminate", {"sandbox_id": ok["sandbox_id"]}, env)[0] == 0
    assert os.path.exists(os.path.join(folder, "state"))  # the volume outlives the sandbox

    request = {"volume": "mycelya-state", "path": STATE_KEY}
    assert driver("discard", request, env)[:2] == (0, [{"ok": {}}])
    assert not os.path.exists(folder)
    assert driver("discard", request, env)[:2] == (0, [{"ok": {}}])  # already gone
    assert driver("discard", {"volume": "no-such-volume", "path": STATE_KEY}, env)[:2] == (0, [{"ok": {}}])
    status, lines, _ = driver("discard", {"volume": "mycelya-state", "path": "../escape"}, env)
    assert status == 1 and lines[-1]["kind"] == "other"
    assert fake.unimplemented_calls() == []


def test_refused_token_is_an_auth_error(fake):
    fake.refuse_tokens = True
    status, lines, _ = driver("start", start_request(), {**base_env(), **fake.env()})
    assert status == 1
    [error] = lines
    assert error["kind"] == "auth"
    assert "refused" in error["error"] and "modal token new" in error["error"]
    assert fake.sandboxes() == []


def test_wrong_secret_is_an_auth_error(fake):
    env = {**base_env(), **fake.env(), "MODAL_TOKEN_SECRET": "as-wrong"}
    status, lines, _ = driver("terminate", {"sandbox_id": "sb-" + "x" * 22}, env)
    assert status == 1 and lines[-1]["kind"] == "auth"


def test_no_credentials_says_how_to_fix_it(fake):
    env = {**base_env(), **fake.env()}
    del env["MODAL_TOKEN_ID"], env["MODAL_TOKEN_SECRET"]
    status, lines, _ = driver("start", start_request(), env)
    assert status == 1
    [error] = lines
    assert error["kind"] == "auth"
    for part in ("No Modal credentials", "modal token new", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"):
        assert part in error["error"]
    assert fake.calls() == []


def test_unknown_gpu_is_reported_with_modals_message(fake):
    status, lines, _ = driver("start", start_request(gpu="Z9000"), {**base_env(), **fake.env()})
    assert status == 1
    # What Modal answers, passed on as it came.
    assert lines[-1]["kind"] == "other" and "Z9000 is not a valid GPU type" in lines[-1]["error"]
    assert fake.sandboxes() == []


def test_no_capacity_is_a_capacity_error_and_leaves_nothing(fake):
    fake.no_capacity = True
    status, lines, _ = driver("start", start_request(schedule_timeout_s=1), {**base_env(), **fake.env()})
    assert status == 1
    assert lines[-1]["kind"] == "capacity"
    [sandbox] = fake.sandboxes()
    assert sandbox["status"] == "terminated" and sandbox["pid"] is None  # it never ran
    assert "SandboxTerminate" in fake.calls()


def test_stopping_the_driver_while_scheduling_terminates_the_sandbox(fake):
    fake.no_capacity = True
    proc = subprocess.Popen(
        [sys.executable, DRIVER, "start"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**base_env(), **fake.env()},
    )
    proc.stdin.write(json.dumps(start_request()))
    proc.stdin.close()
    proc.stdin = None  # written and closed: communicate() must not touch it
    try:
        # Stopped just after the SandboxCreate call: the SDK may not have its id yet, and the
        # driver finds the sandbox by its launch tag.
        wait_for(lambda: fake.sandboxes(), what="the sandbox")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert json.loads(out.splitlines()[-1])["kind"] == "other"
    [sandbox] = fake.sandboxes()
    assert sandbox["status"] == "terminated" and sandbox["pid"] is None
    assert "mycelya-launch" in sandbox["tags"]


def test_never_healthy_sandbox_drops_tunnel_connections(fake):
    fake.never_healthy = True
    _, ok = start(fake)
    assert h2_settings(ok["host"], ok["port"], fake.ca_pem_path) is None  # TLS works, nothing behind it
    [sandbox] = fake.running_sandboxes()
    env = {**base_env(), **fake.env()}
    assert driver("terminate", {"sandbox_id": ok["sandbox_id"]}, env)[0] == 0
    assert not alive(sandbox["pid"])


def test_killed_sandbox_is_a_lost_machine(fake):
    _, ok = start(fake)
    [sandbox] = fake.running_sandboxes()
    fake.kill_sandbox(ok["sandbox_id"])
    wait_for(lambda: not fake.running_sandboxes(), what="the sandbox to die")
    wait_for(lambda: fake.sandboxes()[0]["result"], what="its result")
    assert fake.sandboxes()[0]["result"]["status"] == "failure"
    assert not alive(sandbox["pid"])
    env = {**base_env(), **fake.env()}
    assert driver("terminate", {"sandbox_id": ok["sandbox_id"]}, env)[:2] == (0, [{"ok": {"finished": True}}])


def test_close_leaves_no_process(image_cache):
    fake = FakeModal(server_binary=SERVER, image_cache=image_cache, schedule_s=0.05)
    workdir = fake.workdir
    try:
        start(fake)
        start(fake, command=f"sleep 1000 & {SERVE}")
        pids = fake.pids()
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
    finally:
        fake.close()
    assert not any(alive(pid) for pid in pids)
    assert not os.path.exists(workdir)
    fake.close()  # twice is fine


def test_driver_maps_sdk_errors_to_kinds():
    # Without a scheduling timeout, Sandbox.create itself gives up after 21 minutes with
    # ResourceExhaustedError (modal/sandbox/_impl_v1.py): too slow to wait for here.
    import modal.exception

    spec = importlib.util.spec_from_file_location("modal_driver_under_test", DRIVER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capacity = module.classify(
        modal.exception.ResourceExhaustedError("Insufficient capacity to create sandbox.")
    )
    assert capacity.kind == "capacity" and "Insufficient capacity" in str(capacity)
    missing = module.classify(modal.exception.AuthError("Token missing. Could not authenticate client."))
    assert missing.kind == "auth" and "modal token new" in str(missing)
    assert module.classify(modal.exception.PermissionDeniedError("no access")).kind == "auth"
    assert module.classify(modal.exception.InvalidError("bad gpu")).kind == "other"
    assert module.classify(ValueError("boom")).kind == "other"
