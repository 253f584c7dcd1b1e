# SPDX-License-Identifier: AGPL-3.0-or-later
"""A loopback fake of RunPod's REST API v2 control plane, for tests.

It serves the pod and GPU catalog endpoints (see runpod_api.md beside this file for the
shapes and where they come from) on 127.0.0.1, validates requests as strictly as the real
service's OpenAPI contract, and runs each pod's "container" as a local process group:
`sh <entrypoint> <args>` with the environment RunPod gives a pod. Stdlib only.

    with FakeRunPod(server_binary=..., entrypoint="deploy/entrypoint.sh") as fake:

What a pod's image holds: RunPod's imageName is an opaque registry name, which the fake
cannot pull, so by default its pods run `server_binary`, the binary under test, as the
package's console command would (the image's recipe, deploy/install-server.sh, is run and
checked by tests/test_wheel.py). Given `image_bin` instead, the bin folder of such an install
(the Dockerfile's PATH=/opt/mycelya/bin:...), pods run that install's mycelya-server and
python3, with nothing of the test's environment: test_wheel's pods run what the image would.
        requests.post(fake.base_url + "/pods", headers={"Authorization": "Bearer " + fake.api_key}, ...)

Knobs (plain attributes, settable at any time) inject the failures RunPod can produce.
"""

import collections
import datetime
import http.server
import json
import os
import re
import secrets
import select
import shlex
import shutil
import socket
import ssl
import string
import subprocess
import tempfile
import threading
import time
import urllib.parse

from fakes import free_port, kill_group

# The fake catalog: real RunPod GPU ids, names and memory; pools, prices and stock
# illustrative. Two lines a GPU: id | name | serverless pool | memory GB | USD/h per GPU
# secure, community, serverless | most GPUs on one machine, secure and community | stock
# level; then its data centers | CUDA versions.
_CATALOG = """
NVIDIA H100 80GB HBM3   | H100 SXM  | ADA_80_PRO    |  80 | 2.69 2.39 4.18 | 8 8 | HIGH
    US-KS-2 EU-RO-1 | 12.4 12.6 12.8 12.9
NVIDIA H100 PCIe        | H100 PCIe | ADA_80_PRO    |  80 | 2.39 1.99 4.18 | 8 4 | MEDIUM
    US-TX-3 | 12.4 12.6 12.8
NVIDIA H100 NVL         | H100 NVL  | ADA_80_PRO    |  94 | 2.79 2.59 4.18 | 8 2 | LOW
    EU-RO-1 | 12.6 12.8
NVIDIA H200             | H200 SXM  | HOPPER_141    | 141 | 3.59 3.29 5.58 | 8 8 | MEDIUM
    US-KS-2 CA-MTL-1 | 12.6 12.8 12.9
NVIDIA H200 NVL         | H200 NVL  | HOPPER_141    | 143 | 3.39 3.19 5.58 | 8 4 | LOW
    EU-RO-1 | 12.8 12.9
NVIDIA B200             | B200      | BLACKWELL_180 | 180 | 5.99 5.49 8.64 | 8 8 | LOW
    US-KS-2 | 12.8 12.9
NVIDIA L4               | L4        | ADA_24        |  24 | 0.43 0.39 0.69 | 8 8 | HIGH
    US-TX-3 EU-RO-1 CA-MTL-1 | 12.2 12.4 12.6 12.8
NVIDIA L40S             | L40S      | ADA_48_PRO    |  48 | 0.86 0.79 1.33 | 8 8 | HIGH
    US-KS-2 US-TX-3 EU-RO-1 | 12.4 12.6 12.8
NVIDIA A100 80GB PCIe   | A100 PCIe | AMPERE_80     |  80 | 1.64 1.19 2.72 | 8 8 | MEDIUM
    US-TX-3 CA-MTL-1 | 12.2 12.4 12.6
NVIDIA A100-SXM4-80GB   | A100 SXM  | AMPERE_80     |  80 | 1.74 1.39 2.72 | 8 8 | MEDIUM
    US-KS-2 EU-RO-1 | 12.4 12.6 12.8
NVIDIA GeForce RTX 4090 | RTX 4090  | ADA_24        |  24 | 0.69 0.34 1.10 | 8 4 | HIGH
    EU-RO-1 CA-MTL-1 | 12.4 12.6 12.8 12.9
"""
_GpuType = collections.namedtuple(
    "_GpuType",
    "id name pool memory price_secure price_community price_serverless max_secure max_community"
    " availability data_centers cuda",
)


def _parse_catalog(table):
    lines = table.strip().splitlines()
    rows = []
    for head, tail in zip(lines[::2], lines[1::2], strict=True):
        cells = [cell.strip() for cell in f"{head}|{tail}".split("|")]
        ident, name, pool, memory, prices, most, level, centers, cuda = cells
        secure, community, serverless = (float(price) for price in prices.split())
        max_secure, max_community = (int(count) for count in most.split())
        row = (ident, name, pool, int(memory), secure, community, serverless, max_secure, max_community)
        rows.append(_GpuType(*row, level, centers.split(), cuda.split()))
    return rows


_GPUS = _parse_catalog(_CATALOG)
_DATA_CENTERS = {
    "US-KS-2": ("US Kansas 2", "US"),
    "US-TX-3": ("US Texas 3", "US"),
    "CA-MTL-1": ("CA Montreal 1", "CA"),
    "EU-RO-1": ("EU Romania 1", "RO"),
}
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
}
NO_CAPACITY = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)
NO_GPU_ON_RESUME = "not enough free GPUs on the host machine to start this pod"
_ACTIONS = {
    "PROVISIONING": ["stop", "terminate"],
    "STARTING": ["stop", "terminate"],
    "RUNNING": ["stop", "restart", "terminate"],
    "EXITED": ["start", "terminate"],
    "ERROR": ["start", "terminate"],
}
_LIVE = ("PROVISIONING", "STARTING", "RUNNING")
_PORT_RE = re.compile(r"^([0-9]{1,5})/(tcp|http)$")
_CUDA_RE = re.compile(r"^\d+\.\d+$")
_STOP_GRACE_S = 10.0


class _Problem(Exception):
    """An error answer: application/problem+json."""

    def __init__(self, status, detail, errors=None, headers=None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


def _iso(epoch, micro=False):
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text):
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


def _cuda_key(version):
    major, minor = version.split(".")
    return int(major), int(minor)


class _Schema:
    """Collects JSON-schema style violations (422) with RunPod-like messages."""

    def __init__(self):
        self.errors = []

    def fail(self, where, message):
        self.errors.append(f"{where}: {message}")

    def kind(self, where, value, kind):
        ok = {
            "string": isinstance(value, str),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "boolean": isinstance(value, bool),
            "object": isinstance(value, dict),
            "array": isinstance(value, list),
        }[kind]
        if not ok:
            self.fail(where, f"expected {kind}, got {type(value).__name__}")
        return ok

    def closed(self, where, obj, allowed, required=()):
        for key in obj:
            if key not in allowed:
                self.fail(where, f"additional properties '{key}' not allowed")
        for key in required:
            if key not in obj:
                self.fail(where, f"missing property '{key}'")

    def string(self, where, value, min_length=0, pattern=None, enum=None):
        if not self.kind(where, value, "string"):
            return False
        if len(value) < min_length:
            self.fail(where, f"expected length >= {min_length}")
        elif pattern is not None and not pattern.match(value):
            self.fail(where, f"expected string matching {pattern.pattern}")
        elif enum is not None and value not in enum:
            self.fail(where, f"expected value to be one of {', '.join(enum)}")
        else:
            return True
        return False

    def integer(self, where, value, minimum=None):
        if not self.kind(where, value, "integer"):
            return False
        if minimum is not None and value < minimum:
            self.fail(where, f"expected number >= {minimum}")
            return False
        return True

    def strings(self, where, value, pattern=None):
        if self.kind(where, value, "array"):
            for i, item in enumerate(value):
                self.string(f"{where}[{i}]", item, pattern=pattern)


class _Pod:
    def __init__(self, pod_id, body, gpu, data_center, cuda, created):
        self.id = pod_id
        self.name = body["name"]
        self.body = body
        self.gpu = gpu  # catalog row
        self.gpu_count = body["gpu"].get("count", 1)
        self.cloud = body.get("cloud", "SECURE")
        self.data_center = data_center
        self.cuda = cuda
        self.created = created
        self.started = None
        self.status = "PROVISIONING"
        self.since = time.monotonic()
        self.stuck = False
        self.polled = set()  # statuses a GET of this pod has answered
        self.error_on_start = False
        self.api_key = "rpa_" + secrets.token_hex(20)
        self.proxy_user = f"{pod_id}-{secrets.token_hex(4)}"
        mounts = body.get("mounts") or {}
        self.mount_path = (mounts.get("persistent") or {}).get("path")
        self.volume_dir = None  # the persistent mount, kept across stop/start
        self.disk_dir = None  # the container disk, wiped on stop and restart
        self.log_path = None
        self.logs = []  # (seq, ts epoch, source, line)
        self.proc = None
        self.reader = None
        self.container_since = None
        self.public = {}  # private tcp port -> public port
        self.old_ports = set()  # the last container's public ports: a new start gets others
        self.listening = set()  # private tcp ports that accept connections
        self.restart_at = None
        self.restarts = 0
        self.stopping = False
        self.terminated = False

    def tcp_ports(self):
        ports = []
        for spec in self.body.get("ports", []):
            number, kind = _PORT_RE.match(spec).groups()
            ports.append((int(number), kind))
        return ports


def _install_server_command(binary, path):
    """The image's `mycelya-server` is the package's console command, which names the package's
    interpreter for remote functions and runs the binary: the same, from this process's
    environment (the test's mycelya_torch import sets MYCELYA_PYTHON and MYCELYA_LIBPYTHON)."""
    names = ("MYCELYA_PYTHON", "MYCELYA_LIBPYTHON", "PYTHONPATH")
    exports = "".join(
        f"export {name}={shlex.quote(os.environ[name])}\n" for name in names if name in os.environ
    )
    with open(path, "w") as script:
        script.write(f'#!/bin/sh\n{exports}exec {shlex.quote(binary)} "$@"\n')
    os.chmod(path, 0o755)


class FakeRunPod:
    """RunPod's REST API v2 (pods, GPU catalog) on 127.0.0.1, pods run as local processes."""

    def __init__(
        self,
        *,
        entrypoint,
        server_binary=None,
        image_bin=None,
        api_key="rp_test_key",
        provisioning_s=0.2,
        starting_s=0.2,
        workdir=None,
        tls=None,
    ):
        self.api_key = api_key
        self.provisioning_s = provisioning_s
        self.starting_s = starting_s
        self.entrypoint = os.path.abspath(entrypoint)
        self.no_capacity_gpu_ids = set()
        self.insufficient_balance = False  # creates answer 402
        self.rate_limit_next = 0
        self.fail_after_create_next = 0
        self.stuck_provisioning = False
        # Each starting status lasts until a GET of the pod has shown it, for
        # tests of what the plugin reports of each (its polls are 500 ms apart).
        self.hold_until_polled = False
        self.error_on_start = False
        self.no_gpu_on_resume = False
        self._own_workdir = workdir is None
        self.workdir = tempfile.mkdtemp(prefix="fake-runpod-") if workdir is None else workdir
        os.makedirs(self.workdir, exist_ok=True)
        if (server_binary is None) == (image_bin is None):
            raise ValueError("FakeRunPod needs one of server_binary= and image_bin=")
        if image_bin is not None:
            # The image's PATH: its install's bin folder, then the system's.
            self._image_path = os.path.abspath(image_bin) + os.pathsep + "/usr/local/bin:/usr/bin:/bin"
        else:
            # The image's PATH: a folder whose mycelya-server is the binary under test, then this
            # process's PATH (the entry point's shell tools and python3).
            bin_dir = os.path.join(self.workdir, "bin")
            os.makedirs(bin_dir, exist_ok=True)
            _install_server_command(os.path.abspath(server_binary), os.path.join(bin_dir, "mycelya-server"))
            self._image_path = bin_dir + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")
        self._lock = threading.Condition()
        self._pods = {}  # id -> _Pod, terminated ones excluded
        self._dying = []  # terminated pods whose container is still being killed
        self._procs = []  # every container process started, for close()
        self._helpers = []  # stop/terminate threads
        self._requests = []
        self._seq = 0
        self._closed = False

        class Handler(_Handler):
            fake = self

        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self._http.block_on_close = False
        self.port = self._http.server_address[1]
        # tls=(certificate file, key file): HTTPS, as the real API speaks.
        scheme = "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._http.socket = context.wrap_socket(self._http.socket, server_side=True)
            scheme = "https"
        self.base_url = f"{scheme}://127.0.0.1:{self.port}/v2"
        self._serve = threading.Thread(
            target=self._http.serve_forever, args=(0.05,), name="fake-runpod-http", daemon=True
        )
        self._serve.start()
        self._ticker = threading.Thread(target=self._tick_loop, name="fake-runpod-ticker", daemon=True)
        self._ticker.start()

    # ---- test-facing helpers -------------------------------------------------------------

    def pods(self):
        """Snapshot of the visible pods, as GET /v2/pods/{id} returns them."""
        with self._lock:
            return [self._pod_json(pod) for pod in self._pods.values()]

    def running_pods(self):
        """The visible pods whose container process is alive, as GET returns them."""
        with self._lock:
            return [
                self._pod_json(pod)
                for pod in self._pods.values()
                if pod.proc is not None and pod.proc.poll() is None
            ]

    def container_pids(self):
        """Pids of every container process still alive, terminated pods' included."""
        with self._lock:
            return [proc.pid for proc in self._procs if proc.poll() is None]

    def container_restarts(self, pod_id):
        """How often the fake restarted this pod's container after it exited on its own."""
        with self._lock:
            return self._find(pod_id).restarts

    def pod_api_key(self, pod_id):
        """The pod-scoped RUNPOD_API_KEY given to this pod's container."""
        with self._lock:
            return self._find(pod_id).api_key

    def log_path(self, pod_id):
        """The file holding this pod's container output (None before its first start)."""
        with self._lock:
            return self._find(pod_id).log_path

    def requests(self):
        """Every request seen: (method, path with query, JSON body or None)."""
        with self._lock:
            return list(self._requests)

    def close(self):
        """Kills every container process and stops the HTTP server."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._lock.notify_all()
            procs = list(self._procs)
        self._http.shutdown()
        self._http.server_close()
        self._ticker.join(5)
        for proc in procs:
            kill_group(proc, grace=0)
        for helper in list(self._helpers):
            helper.join(5)
        with self._lock:
            readers = [pod.reader for pod in [*self._pods.values(), *self._dying] if pod.reader]
        for reader in readers:
            reader.join(2)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- the lifecycle -------------------------------------------------------------------

    def _find(self, pod_id):
        pod = self._pods.get(pod_id)
        if pod is None:
            raise _Problem(404, f"pod {pod_id} not found")
        return pod

    def _tick_loop(self):
        while True:
            with self._lock:
                if self._closed:
                    return
                for pod in list(self._pods.values()):
                    self._advance(pod)
                self._lock.wait(0.02)

    def _advance(self, pod):
        """Moves `pod` along its lifecycle; called under the lock."""
        if pod.stopping or pod.terminated:
            return
        now = time.monotonic()
        held = pod.status in ("PROVISIONING", "STARTING") and pod.status not in pod.polled
        if self.hold_until_polled and held:
            return
        if pod.status == "PROVISIONING":
            if not pod.stuck and now - pod.since >= self.provisioning_s:
                pod.status, pod.since = "STARTING", now
                self._syslog(pod, f"pulling image {pod.body['image']}")
        elif pod.status == "STARTING":
            if now - pod.since >= self.starting_s:
                if pod.error_on_start:
                    self._syslog(pod, f"error pulling image: manifest unknown: {pod.body['image']}")
                    self._syslog(pod, "failed to create container; giving up")
                    pod.status, pod.since = "ERROR", now
                else:
                    self._fresh_disk(pod)
                    pod.status, pod.since = "RUNNING", now
                    pod.started = time.time()
                    self._start_container(pod)
        elif pod.status == "RUNNING":
            if pod.proc is not None and pod.proc.poll() is not None:
                # The container exited on its own: RunPod restarts it.
                code = pod.proc.returncode
                kill_group(pod.proc, grace=0)
                pod.proc = None
                pod.public, pod.listening = {}, set()
                pod.restart_at = now + min(max(self.starting_s, 0.05) * 2 ** min(pod.restarts, 4), 2.0)
                self._syslog(pod, f"container exited with code {code}; restarting")
            elif pod.proc is None and pod.restart_at is not None and now >= pod.restart_at:
                pod.restart_at = None
                pod.restarts += 1
                self._start_container(pod)
            elif pod.proc is not None:
                for private, public in pod.public.items():
                    if private not in pod.listening and _accepts(public):
                        pod.listening.add(private)

    def _fresh_disk(self, pod):
        if pod.disk_dir is not None:
            shutil.rmtree(pod.disk_dir, ignore_errors=True)
        pod.disk_dir = tempfile.mkdtemp(prefix="disk-", dir=os.path.join(self.workdir, pod.id))
        os.makedirs(os.path.join(pod.disk_dir, "root"))

    def _path(self, pod, value):
        """The host path standing in for container path `value` (volume or container disk)."""
        if not value.startswith("/"):
            return value
        if pod.mount_path:
            mount = pod.mount_path.rstrip("/") or "/"
            if value == mount or value.startswith(mount + "/"):
                return pod.volume_dir + value[len(mount) :]
        if value == "/workspace" or value.startswith("/workspace/"):
            return pod.disk_dir + value
        return value

    def _start_container(self, pod):
        """Starts the entry point as the pod's container; called under the lock."""
        taken = {port for p in self._pods.values() for port in p.public.values()}
        old = set(pod.public.values()) | pod.old_ports
        pod.public = {}
        for private, kind in pod.tcp_ports():
            if kind == "tcp":
                pod.public[private] = free_port(taken | old)
                taken.add(pod.public[private])
        pod.old_ports = set(pod.public.values())
        pod.listening = set()
        env = {
            "PATH": self._image_path,
            "HOME": os.path.join(pod.disk_dir, "root"),
            "LANG": "C.UTF-8",
        }
        for key, value in (pod.body.get("env") or {}).items():
            env[key] = self._path(pod, value)
        env.update(
            {
                "RUNPOD_POD_ID": pod.id,
                "RUNPOD_PUBLIC_IP": "127.0.0.1",
                "RUNPOD_API_KEY": pod.api_key,
                # Fake-only: RunPod's pods reach https://api.runpod.io; this one reaches the fake.
                "RUNPOD_API_BASE_URL": self.base_url,
            }
        )
        for private, public in pod.public.items():
            env[f"RUNPOD_TCP_PORT_{private}"] = str(public)
        # Fake-only stand-in for the container network's NAT: loopback can't give each pod its
        # own private port, so the server listens on the public port itself.
        wanted = env.get("MYCELYA_PORT", "50051")
        if wanted.isdigit() and int(wanted) in pod.public:
            env["MYCELYA_PORT"] = str(pod.public[int(wanted)])
        args = [self._path(pod, arg) for arg in shlex.split(pod.body.get("args", ""))]
        pod.log_path = os.path.join(self.workdir, pod.id, "container.log")
        try:
            proc = subprocess.Popen(
                ["sh", self.entrypoint, *args],
                env=env,
                cwd=pod.disk_dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as error:
            self._syslog(pod, f"failed to start container: {error}")
            pod.status, pod.since = "ERROR", time.monotonic()
            return
        self._procs.append(proc)
        pod.proc = proc
        pod.container_since = time.monotonic()
        self._syslog(pod, f"container started (public ports {pod.public})")
        pod.reader = threading.Thread(
            target=self._read_output, args=(pod, proc), name=f"fake-runpod-log-{pod.id}", daemon=True
        )
        pod.reader.start()

    def _read_output(self, pod, proc):
        with open(pod.log_path, "ab") as log:
            for raw in iter(proc.stdout.readline, b""):
                log.write(raw)
                log.flush()
                with self._lock:
                    self._append_log(pod, "container", raw.decode("utf-8", "replace").rstrip("\r\n"))
        proc.stdout.close()

    def _append_log(self, pod, source, line):
        self._seq += 1
        pod.logs.append((self._seq, time.time(), source, line))
        self._lock.notify_all()

    def _syslog(self, pod, line):
        self._append_log(pod, "system", line)

    def _halt(self, pod, then):
        """Stops the pod's container in the background (SIGTERM, SIGKILL after the grace
        period), then calls then(pod) under the lock. Called under the lock."""
        pod.stopping = True
        pod.restart_at = None
        proc, reader = pod.proc, pod.reader

        def run():
            if proc is not None:
                kill_group(proc, grace=_STOP_GRACE_S)
            if reader is not None:
                reader.join(2)
            with self._lock:
                pod.proc, pod.reader = None, None
                pod.public, pod.listening = {}, set()
                pod.stopping = False
                then(pod)
                self._lock.notify_all()

        helper = threading.Thread(target=run, name=f"fake-runpod-halt-{pod.id}", daemon=True)
        self._helpers.append(helper)
        helper.start()

    def _exited(self, pod):
        self._syslog(pod, "container stopped")
        pod.status, pod.since = "EXITED", time.monotonic()
        if pod.disk_dir is not None:
            shutil.rmtree(pod.disk_dir, ignore_errors=True)
            pod.disk_dir = None

    def _restarted(self, pod):
        self._syslog(pod, "container restarting")
        pod.status, pod.since = "STARTING", time.monotonic()

    def _gone(self, pod):
        pod.status = "TERMINATED"
        if pod in self._dying:
            self._dying.remove(pod)
        shutil.rmtree(os.path.join(self.workdir, pod.id), ignore_errors=True)

    def _terminate(self, pod):
        pod.terminated = True
        del self._pods[pod.id]
        self._dying.append(pod)
        self._syslog(pod, "pod terminated")
        self._halt(pod, self._gone)

    # ---- rendering -----------------------------------------------------------------------

    def _pod_json(self, pod, creating=False):
        gpu = pod.gpu
        status = pod.status
        running = status == "RUNNING" and not pod.stopping
        actions = list(_ACTIONS.get(status, []))
        if pod.stopping:
            actions = ["stop", "terminate"]
        price = gpu.price_secure if pod.cloud == "SECURE" else gpu.price_community
        runtime = None
        if creating:
            runtime = {}
        elif running:
            ports = []
            for private, kind in pod.tcp_ports():
                ready = kind == "tcp" and private in pod.listening and private in pod.public
                ports.append(
                    {
                        "private": private,
                        "public": pod.public[private] if ready else None,
                        "type": kind,
                        "ip": "127.0.0.1" if ready else None,
                    }
                )
            uptime = 0 if pod.container_since is None else int(time.monotonic() - pod.container_since)
            runtime = {
                "uptime": uptime,
                "gpus": [{"util": 0, "memoryUtil": 0} for _ in range(pod.gpu_count)],
                "cpu": {"util": 0},
                "memory": {"util": 0},
                "ports": ports,
            }
        direct = None
        if runtime and runtime.get("ports"):
            for entry in runtime["ports"]:
                if entry["private"] == 22 and entry["public"] is not None:
                    direct = {
                        "host": entry["ip"],
                        "port": entry["public"],
                        "username": "root",
                        "command": f"ssh root@{entry['ip']} -p {entry['public']}",
                    }
        body = pod.body
        mounts = body.get("mounts") or {}
        return {
            "id": pod.id,
            "name": pod.name,
            "image": body["image"],
            "args": body.get("args", ""),
            "disk": body.get("disk", 50),
            "ports": list(body.get("ports", [])),
            "env": dict(body.get("env") or {}),
            "registry": body.get("registry"),
            "status": status,
            "actions": actions,
            "mounts": json.loads(json.dumps(mounts)),
            "gpu": {
                "id": gpu.id,
                "count": pod.gpu_count,
                "vcpuCount": 16 * pod.gpu_count,
                "memory": 125 * pod.gpu_count,
            },
            "cloud": pod.cloud,
            "dataCenterId": pod.data_center,
            "cudaVersion": pod.cuda,
            "ssh": {
                "proxy": {
                    "host": "ssh.runpod.io",
                    "port": 22,
                    "username": pod.proxy_user,
                    "command": f"ssh {pod.proxy_user}@ssh.runpod.io",
                },
                "direct": direct,
            },
            "template": None,
            "cost": 0.0 if status in ("EXITED", "TERMINATED") else round(price * pod.gpu_count, 2),
            "locked": False,
            "globalNetworking": {"enabled": False},
            "runtime": runtime,
            "createdAt": _iso(pod.created),
            "startedAt": None if pod.started is None else _iso(pod.started),
        }

    # ---- requests ------------------------------------------------------------------------

    def _handle(self, handler, method):
        """Answers one request: returns (status, JSON payload or None), or None once it has
        streamed the answer itself; raises _Problem for an error answer."""
        parsed = urllib.parse.urlsplit(handler.path)
        path = parsed.path
        query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        body = None
        body_error = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body_error = "request body is not valid JSON"
        with self._lock:
            self._requests.append((method, handler.path, body))
        scope = self._authenticate(handler.headers.get("Authorization"))
        with self._lock:
            if self.rate_limit_next > 0:
                self.rate_limit_next -= 1
                raise _Problem(429, "rate limit exceeded for the minute window", headers={"Retry-After": "1"})
        parts = [urllib.parse.unquote(part) for part in path.split("/")]
        if len(parts) < 3 or parts[0] != "" or parts[1] != "v2":
            raise _Problem(404, f"no route for {path}")
        parts = parts[2:]
        if parts[-1] == "" and len(parts) > 1:
            raise _Problem(404, f"no route for {path}")

        def allow(*methods):
            if method not in methods:
                raise _Problem(
                    405,
                    "The requested method is not allowed for this path.",
                    headers={"Allow": ", ".join(methods)},
                )

        def need_body():
            if body_error:
                raise _Problem(400, body_error)
            if body is None:
                raise _Problem(422, "Request validation failed.", ["$: request body is required"])

        if parts[0] == "catalog" and len(parts) in (2, 3) and parts[1] == "gpus":
            allow("GET")
            self._only_account(scope)
            return 200, self._catalog(query, parts[2] if len(parts) == 3 else None)
        if parts[0] != "pods":
            raise _Problem(404, f"no route for {path}")
        if len(parts) == 1:
            allow("GET", "POST")
            self._only_account(scope)
            if method == "GET":
                with self._lock:
                    return 200, {"pods": [self._pod_json(pod) for pod in self._pods.values()]}
            need_body()
            return self._create(body)
        pod_id = parts[1]
        if scope is not None and scope != pod_id:
            raise _Problem(403, "access denied")
        if len(parts) == 2:
            allow("GET", "PATCH", "DELETE")
            if method == "PATCH":
                raise _Problem(501, "the fake does not implement PATCH /v2/pods/{id}")
            with self._lock:
                pod = self._find(pod_id)
                if method == "GET":
                    pod.polled.add(pod.status)
                    return 200, self._pod_json(pod)
                self._terminate(pod)
                return 204, None
        if len(parts) == 3 and parts[2] == "action":
            allow("POST")
            need_body()
            return self._action(pod_id, body)
        if len(parts) == 3 and parts[2] == "logs":
            allow("GET")
            return self._logs(handler, pod_id, query)
        raise _Problem(404, f"no route for {path}")

    def _authenticate(self, header):
        """None for the account key, the pod id for a pod-scoped key; 401 otherwise."""
        if not header:
            raise _Problem(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Problem(401, "malformed bearer token", headers={"WWW-Authenticate": "Bearer"})
        token = token.strip()
        if secrets.compare_digest(token, self.api_key):
            return None
        with self._lock:
            for pod in self._pods.values():
                if secrets.compare_digest(token, pod.api_key):
                    return pod.id
        raise _Problem(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})

    @staticmethod
    def _only_account(scope):
        if scope is not None:
            raise _Problem(403, "access denied")

    def _catalog(self, query, gpu_id):
        def one(name):
            values = query.get(name)
            if values is None:
                return None
            return ",".join(values)

        schema = _Schema()
        include = one("include")
        product = one("product")
        filters = {
            name: one(name) for name in ("count", "cloud", "countryCodes", "cudaVersions", "minCudaVersion")
        }
        if include is not None:
            items = include.split(",")
            if len(items) > 1:
                schema.fail("query.include", "expected at most 1 item")
            for item in items:
                schema.string("query.include", item, enum=["AVAILABILITY"])
        if product is not None:
            for item in product.split(","):
                schema.string("query.product", item, enum=["POD", "CLUSTER", "SERVERLESS"])
        count = 1
        if filters["count"] is not None:
            if re.fullmatch(r"[0-9]+", filters["count"]) and int(filters["count"]) >= 1:
                count = int(filters["count"])
            else:
                schema.fail("query.count", "expected integer >= 1")
        cloud = filters["cloud"] or "SECURE"
        schema.string("query.cloud", cloud, enum=["SECURE", "COMMUNITY"])
        countries = None
        if filters["countryCodes"] is not None:
            countries = filters["countryCodes"].split(",")
            for code in countries:
                schema.string("query.countryCodes", code, pattern=re.compile(r"^[A-Z]{2}$"))
        cudas = None
        if filters["cudaVersions"] is not None:
            cudas = filters["cudaVersions"].split(",")
            for version in cudas:
                schema.string("query.cudaVersions", version, pattern=_CUDA_RE)
        min_cuda = filters["minCudaVersion"]
        if min_cuda is not None:
            schema.string("query.minCudaVersion", min_cuda, pattern=re.compile(r"^\d+(\.\d+)?$"))
        if schema.errors:
            raise _Problem(422, "Request validation failed.", schema.errors)
        if include is None:
            if product is not None:
                raise _Problem(400, "product is valid only with include=AVAILABILITY")
            for name, value in filters.items():
                if value is not None:
                    raise _Problem(400, f"{name} is valid only with include=AVAILABILITY")
        elif product is None:
            raise _Problem(400, "include=AVAILABILITY requires product")
        if cudas is not None and min_cuda is not None:
            raise _Problem(400, "cudaVersions and minCudaVersion are mutually exclusive")

        def cuda_ok(version):
            if cudas is not None:
                return version in cudas
            if min_cuda is not None:
                floor = (int(min_cuda), 0) if "." not in min_cuda else _cuda_key(min_cuda)
                return _cuda_key(version) >= floor
            return True

        rows = _GPUS if gpu_id is None else [row for row in _GPUS if row.id == gpu_id]
        if gpu_id is not None and not rows:
            raise _Problem(404, f"GPU type {gpu_id} not found")
        with self._lock:
            no_capacity = set(self.no_capacity_gpu_ids)
        gpus = []
        for gpu in rows:
            entry = {
                "id": gpu.id,
                "name": gpu.name,
                "pool": gpu.pool,
                "manufacturer": "NVIDIA",
                "memory": gpu.memory,
                "secure": True,
                "community": True,
                "price": {"secure": gpu.price_secure, "community": gpu.price_community},
                "maxCount": {"secure": gpu.max_secure, "community": gpu.max_community},
            }
            if gpu.price_serverless is not None:
                entry["price"]["serverless"] = gpu.price_serverless
            if include is not None:
                ceiling = gpu.max_secure if cloud == "SECURE" else gpu.max_community
                in_countries = [
                    dc for dc in gpu.data_centers if countries is None or _DATA_CENTERS[dc][1] in countries
                ]
                if countries is not None and not in_countries and gpu_id is None:
                    continue
                offered = [v for v in gpu.cuda if cuda_ok(v)]
                available = gpu.id not in no_capacity and count <= ceiling and in_countries and offered
                level = gpu.availability
                entry["availability"] = level if available else "NONE"
                if available:
                    entry["dataCenters"] = [
                        {"id": dc, "name": _DATA_CENTERS[dc][0], "availability": level} for dc in in_countries
                    ]
                entry["cudaVersions"] = [{"version": v, "available": bool(available)} for v in offered]
            gpus.append(entry)
        return gpus[0] if gpu_id is not None else {"gpus": gpus}

    def _validate_create(self, body):
        schema = _Schema()
        if not schema.kind("$", body, "object"):
            raise _Problem(422, "Request validation failed.", schema.errors)
        top = {
            "args",
            "disk",
            "env",
            "image",
            "ports",
            "registry",
            "name",
            "cloud",
            "cpu",
            "dataCenterIds",
            "globalNetworking",
            "gpu",
            "mounts",
            "startJupyter",
            "startSsh",
            "templateId",
        }
        schema.closed("$", body, top, required=["name"] + ([] if "templateId" in body else ["image"]))
        if "name" in body:
            schema.string("$.name", body["name"], min_length=1)
        if "image" in body:
            schema.string("$.image", body["image"])
        if "args" in body:
            schema.string("$.args", body["args"])
        if "disk" in body:
            schema.integer("$.disk", body["disk"], minimum=1)
        if "env" in body and schema.kind("$.env", body["env"], "object"):
            for key, value in body["env"].items():
                schema.string(f"$.env.{key}", value)
        if "ports" in body:
            schema.strings("$.ports", body["ports"])
        if "registry" in body and body["registry"] is not None:
            schema.string("$.registry", body["registry"])
        if "cloud" in body:
            schema.string("$.cloud", body["cloud"], enum=["SECURE", "COMMUNITY"])
        if "dataCenterIds" in body:
            schema.strings("$.dataCenterIds", body["dataCenterIds"])
        for flag in ("globalNetworking", "startJupyter", "startSsh"):
            if flag in body:
                schema.kind(f"$.{flag}", body[flag], "boolean")
        if "templateId" in body:
            schema.string("$.templateId", body["templateId"], min_length=1)
        gpu = body.get("gpu")
        if gpu is not None and schema.kind("$.gpu", gpu, "object"):
            schema.closed(
                "$.gpu",
                gpu,
                {
                    "id",
                    "count",
                    "allowedCudaVersions",
                    "minCudaVersion",
                    "minRamPerGpu",
                    "minVcpuCountPerGpu",
                },
                required=["id"],
            )
            if "id" in gpu:
                schema.string("$.gpu.id", gpu["id"])
            if "count" in gpu:
                schema.integer("$.gpu.count", gpu["count"], minimum=1)
            if "allowedCudaVersions" in gpu:
                schema.strings("$.gpu.allowedCudaVersions", gpu["allowedCudaVersions"], pattern=_CUDA_RE)
            if "minCudaVersion" in gpu:
                schema.string("$.gpu.minCudaVersion", gpu["minCudaVersion"], pattern=_CUDA_RE)
            for key in ("minRamPerGpu", "minVcpuCountPerGpu"):
                if key in gpu:
                    schema.integer(f"$.gpu.{key}", gpu[key], minimum=1)
        elif "gpu" in body and gpu is None:
            schema.fail("$.gpu", "expected object, got NoneType")
        cpu = body.get("cpu")
        if "cpu" in body and schema.kind("$.cpu", cpu, "object"):
            schema.closed("$.cpu", cpu, {"id", "vcpuCount"}, required=["id", "vcpuCount"])
            if "id" in cpu:
                schema.string("$.cpu.id", cpu["id"], min_length=1)
            if "vcpuCount" in cpu:
                schema.integer("$.cpu.vcpuCount", cpu["vcpuCount"], minimum=2)
        mounts = body.get("mounts")
        if "mounts" in body and schema.kind("$.mounts", mounts, "object"):
            schema.closed("$.mounts", mounts, {"persistent", "network"})
            persistent = mounts.get("persistent")
            if "persistent" in mounts and schema.kind("$.mounts.persistent", persistent, "object"):
                schema.closed("$.mounts.persistent", persistent, {"size", "path"}, required=["size", "path"])
                if "size" in persistent:
                    schema.integer("$.mounts.persistent.size", persistent["size"], minimum=10)
                if "path" in persistent:
                    schema.string("$.mounts.persistent.path", persistent["path"])
            network = mounts.get("network")
            if "network" in mounts and schema.kind("$.mounts.network", network, "array"):
                if len(network) > 1:
                    schema.fail("$.mounts.network", "expected at most 1 item")
                for i, item in enumerate(network):
                    if schema.kind(f"$.mounts.network[{i}]", item, "object"):
                        schema.closed(
                            f"$.mounts.network[{i}]",
                            item,
                            {"volumeId", "path"},
                            required=["volumeId", "path"],
                        )
                        for key in ("volumeId", "path"):
                            if key in item:
                                schema.string(f"$.mounts.network[{i}].{key}", item[key])
        if schema.errors:
            raise _Problem(422, "Request validation failed.", schema.errors)
        # Rules the handler enforces (400) on a body that matches the schema.
        if ("gpu" in body) == ("cpu" in body):
            raise _Problem(400, "exactly one of gpu or cpu must be set")
        if "templateId" in body:
            raise _Problem(404, f"template {body['templateId']} not found")
        if "cpu" in body:
            raise _Problem(400, "CPU pods are not supported by this fake")
        if mounts and "persistent" in mounts and "network" in mounts:
            raise _Problem(400, "mounts.persistent and mounts.network are mutually exclusive")
        if mounts and mounts.get("network") is not None:
            if not mounts["network"]:
                raise _Problem(400, "mounts.network must not be empty")
            raise _Problem(400, f"network volume {mounts['network'][0]['volumeId']} not found")
        if mounts and mounts.get("persistent") and not mounts["persistent"]["path"].startswith("/"):
            raise _Problem(400, "mounts.persistent.path must be an absolute path")
        seen = set()
        for spec in body.get("ports", []):
            match = _PORT_RE.match(spec)
            if not match or not 1 <= int(match.group(1)) <= 65535:
                raise _Problem(400, f"invalid port {spec!r}: expected PORT/tcp or PORT/http")
            if int(match.group(1)) in seen:
                raise _Problem(400, f"port {match.group(1)} is listed twice")
            seen.add(int(match.group(1)))
        if gpu.get("allowedCudaVersions") and "minCudaVersion" in gpu:
            raise _Problem(400, "gpu.allowedCudaVersions and gpu.minCudaVersion are mutually exclusive")
        for center in body.get("dataCenterIds", []):
            if center not in _DATA_CENTERS:
                raise _Problem(400, f"unknown data center {center}")

    def _create(self, body):
        self._validate_create(body)
        gpu = body["gpu"]
        rows = [row for row in _GPUS if row.id == gpu["id"]]
        if not rows:
            raise _Problem(400, f"unknown GPU type {gpu['id']!r}; see GET /v2/catalog/gpus")
        row = rows[0]
        cloud = body.get("cloud", "SECURE")
        count = gpu.get("count", 1)
        ceiling = row.max_secure if cloud == "SECURE" else row.max_community
        if count > ceiling:
            raise _Problem(
                400, f"gpu.count {count} exceeds the {ceiling} GPUs of the largest {row.name} machine"
            )
        centers = [
            dc for dc in row.data_centers if not body.get("dataCenterIds") or dc in body["dataCenterIds"]
        ]
        versions = [
            v for v in row.cuda if not gpu.get("allowedCudaVersions") or v in gpu["allowedCudaVersions"]
        ]
        if "minCudaVersion" in gpu:
            versions = [v for v in versions if _cuda_key(v) >= _cuda_key(gpu["minCudaVersion"])]
        if self.insufficient_balance:
            raise _Problem(402, "Insufficient balance: add funds to deploy this pod.")
        with self._lock:
            if gpu["id"] in self.no_capacity_gpu_ids or not centers or not versions:
                raise _Problem(400, NO_CAPACITY)
            pod_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(14))
            pod = _Pod(pod_id, json.loads(json.dumps(body)), row, centers[0], versions[-1], time.time())
            pod.stuck = self.stuck_provisioning
            pod.error_on_start = self.error_on_start
            os.makedirs(os.path.join(self.workdir, pod_id))
            if pod.mount_path:
                pod.volume_dir = os.path.join(self.workdir, pod_id, "volume")
                os.makedirs(pod.volume_dir)
            self._pods[pod_id] = pod
            self._syslog(pod, f"pod created on {pod.data_center} ({count}x {row.name})")
            if self.fail_after_create_next > 0:
                self.fail_after_create_next -= 1
                raise _Problem(500, "upstream error while creating the pod")
            return 201, self._pod_json(pod, creating=True)

    def _action(self, pod_id, body):
        schema = _Schema()
        if schema.kind("$", body, "object"):
            schema.closed("$", body, {"action"}, required=["action"])
            if "action" in body:
                schema.string("$.action", body["action"], enum=["start", "stop", "restart", "terminate"])
        if schema.errors:
            raise _Problem(422, "Request validation failed.", schema.errors)
        action = body["action"]
        with self._lock:
            pod = self._find(pod_id)
            if pod.stopping and action == "stop":
                return 200, self._pod_json(pod)
            allowed = ["stop", "terminate"] if pod.stopping else _ACTIONS.get(pod.status, [])
            if action not in allowed:
                raise _Problem(409, f"cannot {action} a pod whose status is {pod.status}")
            if action == "terminate":
                self._terminate(pod)
                return 204, None
            if action == "stop":
                if pod.proc is None:
                    pod.restart_at = None
                    self._exited(pod)
                else:
                    self._halt(pod, self._exited)
            elif action == "restart":
                self._halt(pod, self._restarted)
                pod.status, pod.since = "STARTING", time.monotonic()
            elif action == "start":
                if self.no_gpu_on_resume:
                    raise _Problem(400, NO_GPU_ON_RESUME)
                pod.error_on_start = self.error_on_start
                pod.status, pod.since = "STARTING", time.monotonic()
                self._syslog(pod, "starting pod")
            return 200, self._pod_json(pod)

    def _logs(self, handler, pod_id, query):
        schema = _Schema()
        source = query.get("source", [None])[-1]
        if source is not None:
            schema.string("query.source", source, enum=["container", "system"])
        tail = 100
        if "tail" in query:
            text = query["tail"][-1]
            if re.fullmatch(r"[0-9]+", text) and int(text) <= 5000:
                tail = int(text)
            else:
                schema.fail("query.tail", "expected integer between 0 and 5000")
        since = None
        if "since" in query:
            since = _parse_time(query["since"][-1])
            if since is None:
                schema.fail("query.since", "expected RFC 3339 date-time")
        after_seq = None
        last_id = handler.headers.get("Last-Event-ID")
        if last_id:
            match = re.fullmatch(r".*/([0-9]+)", last_id.strip())
            if match:
                after_seq = int(match.group(1))
            else:
                schema.fail("header.Last-Event-ID", "expected an event id from this stream")
        if schema.errors:
            raise _Problem(422, "Request validation failed.", schema.errors)
        with self._lock:
            pod = self._find(pod_id)
            lines = [entry for entry in pod.logs if source is None or entry[2] == source]
            if after_seq is not None:
                backlog = [entry for entry in lines if entry[0] > after_seq]
            elif since is not None:
                backlog = [entry for entry in lines if entry[1] >= since]
            else:
                backlog = lines[len(lines) - tail :] if tail else []
            sent = lines[-1][0] if lines else 0
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Connection", "keep-alive")
        handler.send_header("X-Accel-Buffering", "no")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

        def send(entries):
            chunk = "".join(
                f"id: {_iso(ts)}/{seq:012d}\n"
                + "data: "
                + json.dumps({"ts": _iso(ts, micro=True), "source": src, "line": line}, separators=(",", ":"))
                + "\n\n"
                for seq, ts, src, line in entries
            ).encode()
            if chunk:
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                handler.wfile.flush()

        try:
            send(backlog)
            while True:
                with self._lock:
                    live = not self._closed and not pod.terminated and (pod.status in _LIVE or pod.stopping)
                    if live:
                        self._lock.wait(0.25)
                    fresh = [e for e in pod.logs if e[0] > sent and (source is None or e[2] == source)]
                    if fresh:
                        sent = fresh[-1][0]
                send(fresh)
                if not live or _hung_up(handler.connection):
                    break
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except OSError:
            pass
        handler.close_connection = True
        return None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake = None

    def log_message(self, format, *args):
        pass

    def _serve(self, method):
        try:
            try:
                result = self.fake._handle(self, method)
            except _Problem:
                raise
            except Exception as error:  # a bug in the fake: answer it rather than drop the connection
                raise _Problem(500, f"fake error: {error!r}") from error
        except _Problem as problem:
            payload = {
                "type": "about:blank",
                "title": _TITLES.get(problem.status, "Error"),
                "status": problem.status,
                "detail": problem.detail,
            }
            if problem.errors:
                payload["errors"] = problem.errors
            self._reply(problem.status, payload, "application/problem+json", problem.headers)
            return
        if result is None:
            return  # streamed
        status, payload = result
        self._reply(status, payload, "application/json", {})

    def _reply(self, status, payload, content_type, headers):
        data = b"" if payload is None else json.dumps(payload).encode()
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if payload is not None:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def do_DELETE(self):
        self._serve("DELETE")

    def do_PATCH(self):
        self._serve("PATCH")

    def do_PUT(self):
        self._serve("PUT")


def _hung_up(connection):
    """Whether the client closed its end of `connection`."""
    readable, _, _ = select.select([connection], [], [], 0)
    if not readable:
        return False
    try:
        return connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.05):
            return True
    except OSError:
        return False
