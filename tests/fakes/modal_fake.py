# SPDX-License-Identifier: AGPL-3.0-or-later
"""A loopback fake of Modal's client API, for tests of the `modal` provider.

Modal's SDK talks gRPC (grpclib, HTTP/2) to MODAL_SERVER_URL, which may be a plain
http:// URL. This fake serves that service (`modal.client.ModalClient`, through the SDK's
own generated interface in modal_proto) on 127.0.0.1, so the real, pinned SDK runs against
it unchanged. It answers the calls that the provider's driver (python/mycelya_torch/
_modal_driver.py) makes; every other call answers UNIMPLEMENTED and is recorded.

Images are built for real, each layer once (Modal caches images by definition), in a folder
that stands for the image's filesystem:
- a layer without a base image is the base image itself: `FROM python:X.Y...` (what
  debian_slim starts from) becomes a fresh venv of this host's Python, which must be X.Y;
  any other registry image is opaque here, so it becomes a fresh venv with `server_binary`
  as its mycelya-server. The rest of such a layer (Modal's own debian_slim recipe:
  apt-get, debconf, pip's upgrade) is not run: it would change this host, not an image.
- every layer on a base starts as a hard-linked copy of its base's filesystem and runs its
  Dockerfile commands: `COPY . /` copies the layer's files in, and `RUN` runs its shell
  command with the image's venv first on PATH and the image's absolute paths mapped into
  its folder. So the driver's `RUN python -m pip install torch==...` and
  `RUN python -m pip install /opt/mycelya/<wheel>` run pip for real, against pip's
  configured index (PIP_* variables and pip's config files; on this machine a local
  mirror). A command that fails fails the build, as on Modal, with its build log.
Builds go to `image_cache` (default: this fake's own folder); fakes given the same folder
share its images, as Modal's workspace keeps them between apps.

Each sandbox's "container" is a local process group running the sandbox's command with its
image's venv first on PATH (so `mycelya-server` is the one its image installed), and each
of its h2 ports gets a TLS terminator on loopback (certificate from a test CA, ALPN "h2"),
standing in for Modal's tunnel edge.

    with FakeModal(image_cache=folder) as fake:
        subprocess.run([python, driver, "start"], env={**base_env, **fake.env()}, ...)

Knobs (plain attributes, settable at any time): refuse_tokens, no_capacity, never_healthy.
"""

import asyncio
import base64
import collections
import fcntl
import hashlib
import http.server
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import string
import subprocess
import sys
import tempfile
import threading
import time

import grpclib.const
import grpclib.server
from google.protobuf import empty_pb2
from grpclib import GRPCError, Status
from modal_proto import api_grpc, api_pb2

from fakes import free_port, kill_group, signal_group

_ALPHABET = string.ascii_letters + string.digits
_BUILDER_VERSION = "2025.06"
# GPU types Modal accepts (the SDK upper-cases them); a count of up to 8.
_GPU_TYPES = {
    "T4",
    "L4",
    "A10",
    "A10G",
    "L40S",
    "A100",
    "A100-40GB",
    "A100-80GB",
    "H100",
    "H100!",
    "H200",
    "B200",
}
_STOP_GRACE_S = 10.0
_POLL_S = 0.05
_LIST_PAGE = 50
# The PATH of a container and of a build, after the image's venv: the host's system folders.
_SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
_BUILD_LOG_TAIL = 30  # lines of a failed build's log in its error
# Where an image's Python environment lies in its folder: where python:X images keep Python.
_VENV = ("usr", "local")
_REFUSED = "Invalid token: the token ID or secret is not recognised. Run `modal token new` to create one."


def _new_id(prefix, length=22):
    return prefix + "-" + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _result(status, exception="", exitcode=0):
    return api_pb2.GenericResult(status=status, exception=exception, exitcode=exitcode)


class _Container:
    """One sandbox: its definition, its process and its tunnels."""

    def __init__(self, sandbox_id, app_id, definition, env, image_id, tags):
        self.id = sandbox_id
        self.app_id = app_id
        self.tags = tags
        self.created_at = time.time()
        self.definition = definition
        self.env = env  # the secrets' values, as the sandbox gets them
        self.image_id = image_id
        gpu = definition.resources.gpu_config
        self.gpu = f"{gpu.gpu_type}:{gpu.count or 1}" if gpu.gpu_type else None
        self.h2_ports = [
            spec.port for spec in definition.open_ports.ports if spec.tunnel_type == api_pb2.TUNNEL_TYPE_H2
        ]
        self.other_ports = [
            spec.port for spec in definition.open_ports.ports if spec.tunnel_type != api_pb2.TUNNEL_TYPE_H2
        ]
        self.task_id = ""
        self.status = "pending"  # pending, running, terminated
        self.result = None  # api_pb2.GenericResult once finished
        self.end_reason = None  # why it is stopping: terminated, killed, timeout
        self.proc = None
        self.readers = []
        self.logs = []  # (time, file descriptor, line)
        self.ports = {}  # container port -> the loopback port the container listens on
        self.tunnels = {}  # container port -> terminator port on 127.0.0.1
        self.servers = []  # asyncio servers of the TLS terminators
        self.connections = set()  # their open (client, upstream) writers
        self.ran = False


class FakeModal:
    """Modal's client API on 127.0.0.1, sandboxes run as local processes."""

    def __init__(
        self,
        *,
        server_binary=None,
        image_cache=None,
        token_id="ak-test",
        token_secret="as-test",
        workdir=None,
        schedule_s=0.2,
    ):
        self.token_id = token_id
        self.token_secret = token_secret
        self.schedule_s = schedule_s
        self.refuse_tokens = False
        self.no_capacity = False
        self.never_healthy = False
        self._own_workdir = workdir is None
        self.workdir = tempfile.mkdtemp(prefix="fake-modal-") if workdir is None else workdir
        os.makedirs(self.workdir, exist_ok=True)
        # What an opaque registry image (image=) holds: the fake cannot pull it.
        self._server_binary = os.path.abspath(server_binary) if server_binary else None
        self._image_cache = image_cache or os.path.join(self.workdir, "images")
        os.makedirs(self._image_cache, exist_ok=True)
        self._builds = []  # processes of image builds, killed by close()
        self._store = os.path.join(self.workdir, "store")  # uploaded files, by sha256
        self._volumes_dir = os.path.join(self.workdir, "volumes")
        os.makedirs(self._store, exist_ok=True)
        os.makedirs(self._volumes_dir, exist_ok=True)
        self._config_path = os.path.join(self.workdir, "modal.toml")
        open(self._config_path, "w").close()  # an empty config: the SDK reads no ~/.modal.toml
        self.ca_pem_path = self._make_certificates()
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(
            os.path.join(self.workdir, "tls.pem"), os.path.join(self.workdir, "tls.key")
        )
        # gRPC C-core refuses a TLS connection whose handshake selected no "h2".
        self._tls.set_alpn_protocols(["h2"])

        self._lock = threading.Lock()
        self._calls = []
        self._unimplemented = []
        self._environment_id = _new_id("en")
        self._apps = {}  # name -> app id
        self._app_ids = set()
        self._secrets = {}  # id -> env dict
        self._images = collections.OrderedDict()  # id -> record (dict)
        self._mounts = {}  # id -> [(filename, sha256, size)]
        self._blobs = {}  # id -> {"length", "md5", "sha256", "uploaded"}
        self._volumes = {}  # name -> {"id", "dir", "version"}
        self._containers = collections.OrderedDict()  # id -> _Container
        self._procs = []
        self._closed = False

        self._blob_http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _blob_handler(self))
        self._blob_http.daemon_threads = True
        self._blob_url = f"http://127.0.0.1:{self._blob_http.server_address[1]}"
        self._blob_thread = threading.Thread(
            target=self._blob_http.serve_forever, args=(0.05,), name="fake-modal-blobs", daemon=True
        )
        self._blob_thread.start()

        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="fake-modal-grpc", daemon=True
        )
        self._loop_thread.start()
        self._grpc = asyncio.run_coroutine_threadsafe(self._start_grpc(), self._loop).result(10)
        self.port = self._grpc_port
        self.server_url = f"http://127.0.0.1:{self.port}"

    # ---- test-facing helpers -------------------------------------------------------------

    def env(self):
        """The environment that points the SDK at this fake, with its token."""
        return {
            "MODAL_SERVER_URL": self.server_url,
            "MODAL_TOKEN_ID": self.token_id,
            "MODAL_TOKEN_SECRET": self.token_secret,
            "MODAL_CONFIG_PATH": self._config_path,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }

    def sandboxes(self):
        """Every sandbox created: id, gpu, status, image, env, command and more."""
        with self._lock:
            return [self._describe(container) for container in self._containers.values()]

    def running_sandboxes(self):
        """The sandboxes whose container process is alive."""
        with self._lock:
            return [
                self._describe(container)
                for container in self._containers.values()
                if container.proc is not None and container.proc.poll() is None
            ]

    def images(self):
        """Every image definition the SDK asked for, in order: id, base images, commands, files,
        and its build: state (None, building, built, failed), log lines and root (its folder)."""
        with self._lock:
            return [dict(record) for record in self._images.values()]

    def apps(self):
        """The apps looked up or created so far: name -> app id (a sandbox's "app_id")."""
        with self._lock:
            return dict(self._apps)

    def volume_path(self, name):
        """The local folder holding volume `name` (None before it exists)."""
        with self._lock:
            volume = self._volumes.get(name)
            return volume["dir"] if volume else None

    def calls(self):
        """Every RPC name called, in order."""
        with self._lock:
            return list(self._calls)

    def unimplemented_calls(self):
        """The RPCs called that this fake does not implement."""
        with self._lock:
            return list(self._unimplemented)

    def pids(self):
        """Pids of every container process started, alive or not."""
        with self._lock:
            return [proc.pid for proc in self._procs]

    def kill_sandbox(self, sandbox_id):
        """SIGKILLs the sandbox's process group: its machine was lost."""
        with self._lock:
            container = self._containers[sandbox_id]
            proc = container.proc
            if proc is None or container.result is not None:
                return
            container.end_reason = container.end_reason or "killed"
        signal_group(proc, signal.SIGKILL)

    def close(self):
        """Kills every container, stops the servers and deletes the volumes (and own workdir)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            procs = list(self._procs) + list(self._builds)
            containers = list(self._containers.values())
        for proc in procs:
            kill_group(proc, grace=0)
        for container in containers:
            for reader in container.readers:
                reader.join(2)
        try:
            asyncio.run_coroutine_threadsafe(self._stop_async(containers), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(5)
            self._loop.close()
            self._blob_http.shutdown()
            self._blob_http.server_close()
        shutil.rmtree(self._volumes_dir, ignore_errors=True)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- setup ---------------------------------------------------------------------------

    def _make_certificates(self):
        """A test CA and a certificate it signed for localhost / 127.0.0.1, with openssl."""
        work = self.workdir

        def openssl(*args):
            subprocess.run(["openssl", *args], cwd=work, check=True, capture_output=True)

        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        openssl(
            "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=fake-modal test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        openssl("req", "-new", *key, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=localhost")
        with open(os.path.join(work, "tls.ext"), "w") as ext:
            ext.write(
                "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                "basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n"
            )
        openssl(
            "x509", "-req", "-in", "tls.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "tls.pem", "-days", "2", "-extfile", "tls.ext",
        )  # fmt: skip
        return os.path.join(work, "ca.pem")

    async def _start_grpc(self):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self._grpc_port = sock.getsockname()[1]
        server = grpclib.server.Server([_Servicer(self)])
        await server.start(sock=sock)
        return server

    async def _stop_async(self, containers):
        for container in containers:
            self._close_tunnels(container)
        self._grpc.close()
        await self._grpc.wait_closed()
        for task in [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]:
            task.cancel()

    # ---- bookkeeping used by the servicer (call under the lock) -----------------------------

    def _describe(self, container):
        layers = self._layers(container.image_id)
        return {
            "id": container.id,
            "app_id": container.app_id,
            "gpu": container.gpu,
            "status": container.status,
            "result": _describe_result(container.result),
            "image_id": container.image_id,
            "image_root": self._images[container.image_id]["root"],
            "image": layers,
            "image_commands": [command for layer in layers for command in layer["commands"]],
            "image_files": [file for layer in layers for file in layer["files"]],
            "env": dict(container.env),
            "command": list(container.definition.entrypoint_args),
            "timeout_s": container.definition.timeout_secs,
            "h2_ports": list(container.h2_ports),
            "volumes": {
                mount.mount_path: self._volume_name(mount.volume_id)
                for mount in container.definition.volume_mounts
            },
            "tunnels": {
                port: {"host": "localhost", "port": local} for port, local in container.tunnels.items()
            },
            "pid": container.proc.pid if container.proc else None,
            "task_id": container.task_id,
            "tags": dict(container.tags),
        }

    def _layers(self, image_id):
        """The image's layers, base first."""
        layers = []
        while image_id in self._images:
            record = self._images[image_id]
            layers.insert(0, record)
            bases = record["base_images"]
            image_id = bases[0]["image_id"] if bases else None
        return [dict(layer) for layer in layers]

    def _volume_name(self, volume_id):
        return next((name for name, volume in self._volumes.items() if volume["id"] == volume_id), None)

    def _volume_dir(self, volume_id):
        volume = next((volume for volume in self._volumes.values() if volume["id"] == volume_id), None)
        if volume is None:
            raise GRPCError(Status.NOT_FOUND, f"Volume {volume_id} not found")
        return volume["dir"]

    def _container(self, sandbox_id):
        container = self._containers.get(sandbox_id)
        if container is None:
            raise GRPCError(Status.NOT_FOUND, f"Sandbox {sandbox_id} not found")
        return container

    # ---- image builds -----------------------------------------------------------------------

    def _start_build(self, record):
        """Builds the image in a thread, unless it is built or building; called under the lock."""
        if record["state"] in ("built", "building"):
            return
        record.update(state="building", log=[], exception="")
        threading.Thread(target=self._build, args=(record,), name="fake-modal-build", daemon=True).start()

    def _build(self, record):
        """Builds one layer on its (built) base into image_cache/<image id>/root, once."""
        folder = os.path.join(self._image_cache, record["id"])
        root = os.path.join(folder, "root")
        done = os.path.join(folder, "built")
        try:
            os.makedirs(folder, exist_ok=True)
            # Fakes sharing a cache build each image once, one at a time.
            with open(os.path.join(folder, "lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if os.path.exists(done):
                    self._log(record, "=> cached")
                else:
                    shutil.rmtree(root, ignore_errors=True)  # what a failed build left
                    self._build_into(record, root)
                    open(done, "w").close()
            state, exception = "built", ""
        except (_BuildFailed, OSError) as failure:  # an OSError: the fake's own step failed
            state, exception = "failed", str(failure)
        with self._lock:
            record.update(state=state, exception=exception, built=state == "built")

    def _build_into(self, record, root):
        bases = record["base_images"]
        commands = record["commands"]
        if not bases:
            # A base image: its FROM, stood in for by a venv; the rest is its own recipe.
            self._log(record, f"=> Step 0: {commands[0] if commands else 'FROM scratch'}")
            self._make_base(record, root, commands[0] if commands else "")
            return
        with self._lock:
            base_root = self._images[bases[0]["image_id"]]["root"]
        # A layer starts as its base's filesystem: hard links, so torch is not copied again.
        self._run(record, ["cp", "-al", base_root, root], cwd="/")
        _retarget_scripts(os.path.join(base_root, *_VENV, "bin"), os.path.join(root, *_VENV, "bin"))
        for step, command in enumerate(commands):
            self._log(record, f"=> Step {step}: {command}")
            instruction, _, rest = command.partition(" ")
            if instruction == "FROM":
                continue  # the base, copied above
            if instruction == "COPY" and rest.split() == [".", "/"]:
                for file in record["files"]:
                    target = os.path.join(root, file["filename"].lstrip("/"))
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    shutil.copyfile(file["path"], target)
            elif instruction == "RUN":
                self._run(record, ["sh", "-c", _in_image(rest, root)], cwd=root, root=root, what=command)
            else:
                raise _BuildFailed(
                    f"the fake Modal builds only FROM, COPY . / and RUN in a layer on a base, not: {command}"
                )

    def _make_base(self, record, root, command):
        """A fresh venv of this host's Python for `FROM python:X.Y...` (which must be this
        Python's X.Y) or, with server_binary as its mycelya-server, for any other registry image."""
        found = re.fullmatch(r"FROM python:(\d+)\.(\d+)\S*", command)
        if found and tuple(map(int, found.groups())) != sys.version_info[:2]:
            raise _BuildFailed(
                f"the fake Modal builds {command!r} with this host's Python "
                f"{sys.version_info[0]}.{sys.version_info[1]}: ask for that python_version"
            )
        venv = os.path.join(root, *_VENV)
        self._run(record, [sys.executable, "-m", "venv", venv], cwd="/")
        if not found and self._server_binary:
            os.symlink(self._server_binary, os.path.join(venv, "bin", "mycelya-server"))

    def _run(self, record, command, cwd, root=None, what=None):
        """Runs one build command (in the image `root`, if given), its output into the build
        log; a failure fails the build, naming the command as `what` (default: `command`)."""
        env = {key: value for key, value in os.environ.items() if key.startswith("PIP_")}
        if os.environ.get("TMPDIR"):
            env["TMPDIR"] = os.environ["TMPDIR"]
        if root is not None:
            env.update(
                PATH=os.path.join(root, *_VENV, "bin") + os.pathsep + _SYSTEM_PATH,
                HOME=os.path.join(root, "root"),
                LANG="C.UTF-8",
            )
            os.makedirs(env["HOME"], exist_ok=True)
        else:
            env["PATH"] = _SYSTEM_PATH
        with self._lock:
            if self._closed:
                raise _BuildFailed("the fake Modal closed during the build")
            proc = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self._builds.append(proc)
        for raw in iter(proc.stdout.readline, b""):
            self._log(record, raw.decode("utf-8", "replace").rstrip("\n"))
        proc.stdout.close()
        code = proc.wait()
        if code != 0:
            with self._lock:
                tail = record["log"][-_BUILD_LOG_TAIL:]
            raise _BuildFailed(
                f"`{what or shlex.join(command)}` exited with status {code}. The build log's last lines:\n"
                + "\n".join(tail)
            )

    def _log(self, record, line):
        with self._lock:
            record["log"].append(line)

    # ---- the container lifecycle ----------------------------------------------------------

    async def _schedule(self, container):
        """Starts the container once the fake "found a machine" (never while no_capacity)."""
        await asyncio.sleep(self.schedule_s)
        while self.no_capacity:
            await asyncio.sleep(_POLL_S)
            with self._lock:
                if container.result is not None:
                    return
        with self._lock:
            if container.result is not None or self._closed:
                return
            self._start_container(container)
            container.status = "running"
        for port in container.h2_ports:
            server = await asyncio.start_server(
                lambda reader, writer, port=port: self._tunnel(container, port, reader, writer),
                "127.0.0.1",
                0,
                ssl=self._tls,
            )
            with self._lock:
                container.servers.append(server)
                container.tunnels[port] = server.sockets[0].getsockname()[1]
                finished = container.result is not None
            if finished:
                self._close_tunnels(container)
        timeout = container.definition.timeout_secs
        if timeout:
            self._loop.call_later(timeout, self._time_out, container)

    def _start_container(self, container):
        """Runs the sandbox's command as its container; called under the lock."""
        root = os.path.join(self.workdir, "sandboxes", container.id)
        home = os.path.join(root, "home")
        os.makedirs(home, exist_ok=True)
        mounts = [
            (mount.mount_path.rstrip("/") or "/", self._volume_dir(mount.volume_id))
            for mount in container.definition.volume_mounts
        ]

        def local(value):
            # Paths under a volume's mount point go to the volume's local folder.
            for mount, folder in mounts:
                pattern = r"(?<![\w./-])" + re.escape(mount) + r"(?=/|$|[^\w.-])"
                value = re.sub(pattern, lambda _, folder=folder: folder, value)
            return value

        # The fake's stand-in for the container network: loopback cannot give every
        # container its own ports, so a container listens on MYCELYA_PORT, a free
        # loopback port, and the tunnel of its first h2 port forwards there (others
        # get MYCELYA_PORT_<container port>). The command must listen on ${MYCELYA_PORT}.
        # The image's venv comes first: its mycelya-server is the one the image's build installed.
        image_bin = os.path.join(self._images[container.image_id]["root"], *_VENV, "bin")
        env = {
            "PATH": image_bin + os.pathsep + _SYSTEM_PATH,
            "HOME": home,
            "LANG": "C.UTF-8",
        }
        env.update({key: local(value) for key, value in container.env.items()})
        for port in container.h2_ports + container.other_ports:
            container.ports[port] = free_port()
            env[f"MYCELYA_PORT_{port}"] = str(container.ports[port])
        if container.h2_ports:
            env["MYCELYA_PORT"] = str(container.ports[container.h2_ports[0]])
        command = [local(arg) for arg in container.definition.entrypoint_args]
        if self.never_healthy or not command:
            # A container whose server never listens, saying why on stderr.
            why = "echo 'mycelya-server: cannot open libcudart.so.13' >&2"
            command = ["sh", "-c", why + "; exec sleep 1000000"]
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._procs.append(proc)
        container.proc = proc
        container.ran = True
        container.task_id = _new_id("ta", 26)
        log_path = os.path.join(root, "container.log")
        for pipe, fd in (
            (proc.stdout, api_pb2.FILE_DESCRIPTOR_STDOUT),
            (proc.stderr, api_pb2.FILE_DESCRIPTOR_STDERR),
        ):
            reader = threading.Thread(
                target=self._read_output,
                args=(container, pipe, fd, log_path),
                name="fake-modal-log",
                daemon=True,
            )
            container.readers.append(reader)
            reader.start()
        threading.Thread(
            target=self._await_exit, args=(container, proc), name="fake-modal-wait", daemon=True
        ).start()

    def _read_output(self, container, pipe, fd, log_path):
        with open(log_path, "ab") as log:
            for raw in iter(pipe.readline, b""):
                log.write(raw)
                log.flush()
                with self._lock:
                    container.logs.append((time.time(), fd, raw.decode("utf-8", "replace")))
        pipe.close()

    def _await_exit(self, container, proc):
        code = proc.wait()
        for reader in container.readers:
            reader.join(5)
        with self._lock:
            reason = container.end_reason
            if reason == "terminated":
                container.result = _result(api_pb2.GenericResult.GENERIC_STATUS_TERMINATED, exitcode=code)
            elif reason == "timeout":
                container.result = _result(
                    api_pb2.GenericResult.GENERIC_STATUS_TIMEOUT, "Sandbox timed out", exitcode=code
                )
            elif reason == "killed":
                container.result = _result(
                    api_pb2.GenericResult.GENERIC_STATUS_FAILURE,
                    "The worker running this sandbox was lost",
                    code,
                )
            elif code == 0:
                container.result = _result(api_pb2.GenericResult.GENERIC_STATUS_SUCCESS)
            else:
                container.result = _result(
                    api_pb2.GenericResult.GENERIC_STATUS_FAILURE, f"Process exited with status {code}", code
                )
            container.status = "terminated"
            closed = self._closed
        if not closed:
            self._loop.call_soon_threadsafe(self._close_tunnels, container)

    def _stop(self, container, reason):
        """Stops the container: SIGTERM, SIGKILL after the grace period. Called under the lock."""
        if container.result is not None or container.end_reason is not None:
            return
        container.end_reason = reason
        if container.proc is None:  # never scheduled
            container.result = _result(api_pb2.GenericResult.GENERIC_STATUS_TERMINATED)
            container.status = "terminated"
            return
        proc = container.proc

        def run():
            kill_group(proc, _STOP_GRACE_S)

        threading.Thread(target=run, name="fake-modal-stop", daemon=True).start()

    def _time_out(self, container):
        with self._lock:
            self._stop(container, "timeout")

    def _close_tunnels(self, container):
        """Closes the container's TLS terminators and their connections (on the loop)."""
        with self._lock:
            servers, container.servers = container.servers, []
            connections = list(container.connections)
            container.connections.clear()
        for server in servers:
            server.close()
        for writer in connections:
            writer.close()

    async def _tunnel(self, container, port, reader, writer):
        """One TLS connection to the tunnel: forwards its bytes to the container's port."""
        with self._lock:
            target = container.ports.get(port) if container.status == "running" else None
            if target is not None:
                container.connections.add(writer)
        if target is None:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            # Nothing listens in the container (yet): the edge drops the connection.
            with self._lock:
                container.connections.discard(writer)
            writer.close()
            return
        with self._lock:
            container.connections.add(up_writer)

        async def pump(source, sink):
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer), return_exceptions=True)
        with self._lock:
            container.connections.discard(writer)
            container.connections.discard(up_writer)


def _describe_result(result):
    if result is None:
        return None
    name = api_pb2.GenericResult.GenericStatus.Name(result.status)
    return {"status": name.removeprefix("GENERIC_STATUS_").lower(), "exitcode": result.exitcode}


class _BuildFailed(Exception):
    """An image build failed; the message is what Modal's result reports."""


def _in_image(command, root):
    """`command` with each absolute path that exists in the image's folder `root` pointing there."""

    def local(found):
        path = found.group(0)
        return root + path if os.path.lexists(root + path) else path

    return re.sub(r"(?<![\w./-])/[\w./+-]+", local, command)


def _retarget_scripts(old_bin, new_bin):
    """A copied venv's scripts name the old venv's python in their #! line: new files (not
    edits, which would change the base's hard-linked ones) name the copy's."""
    old = f"#!{old_bin}/".encode()
    for name in os.listdir(new_bin):
        path = os.path.join(new_bin, name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, "rb") as script:
            data = script.read()
        if data.startswith(old):
            _write_atomically(path, f"#!{new_bin}/".encode() + data[len(old) :])
            os.chmod(path, 0o755)


# ---- the gRPC service ------------------------------------------------------------------------


class _Servicer(api_grpc.ModalClientBase):
    """The RPCs the driver makes through the SDK; the rest answer UNIMPLEMENTED."""

    def __init__(self, fake):
        self.fake = fake

    def __mapping__(self):
        # Every call: record it and check the token headers the SDK sends.
        mapping = {}
        for path, handler in super().__mapping__().items():
            name = path.rsplit("/", 1)[1]
            mapping[path] = grpclib.const.Handler(
                self._guard(name, handler.func), handler.cardinality, handler.request_type, handler.reply_type
            )
        return mapping

    def _guard(self, name, func):
        fake = self.fake

        async def guarded(stream):
            with fake._lock:
                fake._calls.append(name)
            token_id = stream.metadata.get("x-modal-token-id")
            token_secret = stream.metadata.get("x-modal-token-secret")
            if fake.refuse_tokens or token_id != fake.token_id or token_secret != fake.token_secret:
                raise GRPCError(Status.UNAUTHENTICATED, _REFUSED)
            await func(stream)

        return guarded

    # ---- client, environment, app ----

    async def ClientHello(self, stream):
        await stream.recv_message()
        await stream.send_message(api_pb2.ClientHelloResponse(image_builder_version=_BUILDER_VERSION))

    async def EnvironmentGetOrCreate(self, stream):
        request = await stream.recv_message()
        if request.deployment_name not in ("", "main"):
            raise GRPCError(Status.NOT_FOUND, f"Environment '{request.deployment_name}' not found")
        metadata = api_pb2.EnvironmentMetadata(
            name="main", settings=api_pb2.EnvironmentSettings(image_builder_version=_BUILDER_VERSION)
        )
        await stream.send_message(
            api_pb2.EnvironmentGetOrCreateResponse(
                environment_id=self.fake._environment_id, metadata=metadata
            )
        )

    async def AppGetOrCreate(self, stream):
        request = await stream.recv_message()
        fake = self.fake
        with fake._lock:
            app_id = fake._apps.get(request.app_name)
            if app_id is None:
                if request.object_creation_type != api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                    raise GRPCError(Status.NOT_FOUND, f"App '{request.app_name}' not found")
                app_id = fake._apps[request.app_name] = _new_id("ap")
                fake._app_ids.add(app_id)
        await stream.send_message(api_pb2.AppGetOrCreateResponse(app_id=app_id))

    async def SecretGetOrCreate(self, stream):
        request = await stream.recv_message()
        if request.deployment_name:
            raise GRPCError(Status.NOT_FOUND, f"Secret '{request.deployment_name}' not found")
        secret_id = _new_id("st")
        with self.fake._lock:
            self.fake._secrets[secret_id] = dict(request.env_dict)
        await stream.send_message(api_pb2.SecretGetOrCreateResponse(secret_id=secret_id))

    # ---- images and the files they add ----

    async def ImageGetOrCreate(self, stream):
        request = await stream.recv_message()
        fake = self.fake
        image = request.image
        with fake._lock:
            # Like Modal, the image's identity follows the content of its context mount, not the
            # mount's id, so the same files give the same (cached) image.
            identity = api_pb2.Image()
            identity.CopyFrom(image)
            if image.context_mount_id in fake._mounts:
                identity.context_mount_id = repr(sorted(fake._mounts[image.context_mount_id]))
            digest = hashlib.sha256(identity.SerializeToString(deterministic=True)).hexdigest()
            image_id = "im-" + digest[:22]
            for base in image.base_images:
                if base.image_id not in fake._images or not fake._images[base.image_id]["built"]:
                    raise GRPCError(Status.NOT_FOUND, f"Base image {base.image_id} not found")
            if image.context_mount_id and image.context_mount_id not in fake._mounts:
                raise GRPCError(Status.NOT_FOUND, f"Mount {image.context_mount_id} not found")
            record = fake._images.get(image_id)
            if record is None:
                files = [
                    {"filename": name, "sha256": sha, "size": size, "path": os.path.join(fake._store, sha)}
                    for name, sha, size in fake._mounts.get(image.context_mount_id, [])
                ]
                record = fake._images[image_id] = {
                    "id": image_id,
                    "base_images": [
                        {"tag": base.docker_tag, "image_id": base.image_id} for base in image.base_images
                    ],
                    "commands": list(image.dockerfile_commands),
                    "files": files,
                    "gpu": image.gpu_config.gpu_type or None,
                    "built": False,
                    "state": None,
                    "log": [],
                    "exception": "",
                    "root": os.path.join(fake._image_cache, image_id, "root"),
                }
                if os.path.exists(os.path.join(fake._image_cache, image_id, "built")):
                    record.update(state="built", built=True)  # built by an earlier fake
            # Like Modal, asking for an image starts its build (again, after a failed one).
            fake._start_build(record)
            built = record["built"]
        response = api_pb2.ImageGetOrCreateResponse(image_id=image_id)
        if built:
            response.result.CopyFrom(_result(api_pb2.GenericResult.GENERIC_STATUS_SUCCESS))
            response.metadata.CopyFrom(self._image_metadata(image_id))
        await stream.send_message(response)

    def _image_metadata(self, image_id):
        python = "3.11.13"
        for layer in self.fake._layers(image_id):
            for command in layer["commands"]:
                found = re.match(r"FROM python:(\d+\.\d+(?:\.\d+)?)", command)
                if found:
                    python = found.group(1) if found.group(1).count(".") == 2 else found.group(1) + ".0"
        return api_pb2.ImageMetadata(
            python_version_info=f"Python {python}", image_builder_version=_BUILDER_VERSION, workdir="/root"
        )

    async def ImageJoinStreaming(self, stream):
        """Streams the build's log from last_entry_id until the build ends (its result, eof) or
        the request's timeout passes (no result: the SDK joins again)."""
        request = await stream.recv_message()
        fake = self.fake
        sent = int(request.last_entry_id or 0)
        deadline = time.monotonic() + (request.timeout or 55)
        while True:
            with fake._lock:
                record = fake._images.get(request.image_id)
                if record is None:
                    raise GRPCError(Status.NOT_FOUND, f"Image {request.image_id} not found")
                lines = record["log"][sent:]
                state, exception = record["state"], record["exception"]
                metadata = self._image_metadata(request.image_id)
            if lines:
                response = api_pb2.ImageJoinStreamingResponse(entry_id=str(sent + len(lines)))
                for line in lines:
                    response.task_logs.append(
                        api_pb2.TaskLogs(data=line + "\n", file_descriptor=api_pb2.FILE_DESCRIPTOR_STDOUT)
                    )
                sent += len(lines)
                await stream.send_message(response)
            if state in ("built", "failed"):
                break
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(_POLL_S)
        response = api_pb2.ImageJoinStreamingResponse(eof=True)
        if state == "built":
            response.result.CopyFrom(_result(api_pb2.GenericResult.GENERIC_STATUS_SUCCESS))
            response.metadata.CopyFrom(metadata)
        else:
            response.result.CopyFrom(_result(api_pb2.GenericResult.GENERIC_STATUS_FAILURE, exception))
        await stream.send_message(response)

    async def MountBatchedCheckExistence(self, stream):
        request = await stream.recv_message()
        store = self.fake._store
        missing = [sha for sha in request.sha256_hex_hashes if not os.path.exists(os.path.join(store, sha))]
        await stream.send_message(
            api_pb2.MountBatchedCheckExistenceResponse(missing_sha256_hex_hashes=missing)
        )

    async def MountPutFile(self, stream):
        request = await stream.recv_message()
        fake = self.fake
        path = os.path.join(fake._store, request.sha256_hex)
        if request.data_blob_id:
            with fake._lock:
                blob = fake._blobs.get(request.data_blob_id)
            if blob is None or not blob["uploaded"]:
                raise GRPCError(Status.NOT_FOUND, f"Blob {request.data_blob_id} not found")
            if blob["sha256"] != request.sha256_hex:
                raise GRPCError(Status.INVALID_ARGUMENT, "The blob's sha256 does not match")
        elif request.HasField("data"):
            if hashlib.sha256(request.data).hexdigest() != request.sha256_hex:
                raise GRPCError(Status.INVALID_ARGUMENT, "The file's sha256 does not match its data")
            _write_atomically(path, request.data)
        exists = os.path.exists(path)
        await stream.send_message(api_pb2.MountPutFileResponse(exists=exists))

    async def BlobCreate(self, stream):
        request = await stream.recv_message()
        fake = self.fake
        blob_id = _new_id("bl")
        with fake._lock:
            fake._blobs[blob_id] = {
                "length": request.content_length,
                "md5": request.content_md5,
                "sha256": None,
                "uploaded": False,
            }
        response = api_pb2.BlobCreateResponse(blob_ids=[blob_id])
        response.upload_urls.items.append(f"{fake._blob_url}/blobs/{blob_id}")
        await stream.send_message(response)

    async def MountGetOrCreate(self, stream):
        request = await stream.recv_message()
        fake = self.fake
        if request.deployment_name:
            raise GRPCError(Status.NOT_FOUND, f"Mount '{request.deployment_name}' not found")
        files = []
        for file in request.files:
            path = os.path.join(fake._store, file.sha256_hex)
            if not os.path.exists(path):
                raise GRPCError(Status.FAILED_PRECONDITION, f"File {file.filename} was not uploaded")
            files.append((file.filename, file.sha256_hex, os.path.getsize(path)))
        mount_id = _new_id("mo")
        with fake._lock:
            fake._mounts[mount_id] = files
        await stream.send_message(api_pb2.MountGetOrCreateResponse(mount_id=mount_id))

    # ---- volumes ----

    async def VolumeGetOrCreate(self, stream):
        request = await stream.recv_message()
        fake = self.fake
        name = request.deployment_name
        if not name:
            raise GRPCError(Status.INVALID_ARGUMENT, "Ephemeral volumes are not supported by the fake")
        with fake._lock:
            volume = fake._volumes.get(name)
            if volume is None:
                if request.object_creation_type != api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                    raise GRPCError(Status.NOT_FOUND, f"Volume '{name}' not found")
                version = request.version or api_pb2.VOLUME_FS_VERSION_V2
                folder = os.path.join(fake._volumes_dir, name)
                os.makedirs(folder, exist_ok=True)
                volume = fake._volumes[name] = {"id": _new_id("vo"), "dir": folder, "version": version}
        metadata = api_pb2.VolumeMetadata(version=volume["version"], name=name)
        await stream.send_message(
            api_pb2.VolumeGetOrCreateResponse(
                volume_id=volume["id"], version=volume["version"], metadata=metadata
            )
        )

    async def _remove_file(self, stream):
        request = await stream.recv_message()
        fake = self.fake
        with fake._lock:
            root = fake._volume_dir(request.volume_id)
        relative = request.path.strip("/")
        target = os.path.normpath(os.path.join(root, relative))
        if not relative or not target.startswith(root + os.sep):
            raise GRPCError(Status.INVALID_ARGUMENT, f"Invalid path {request.path!r}")
        if not os.path.lexists(target):
            raise GRPCError(Status.NOT_FOUND, f"No such file or directory: {request.path}")
        if os.path.isdir(target) and not os.path.islink(target):
            if not request.recursive and os.listdir(target):
                raise GRPCError(Status.INVALID_ARGUMENT, f"{request.path} is a non-empty directory")
            shutil.rmtree(target)
        else:
            os.unlink(target)
        await stream.send_message(empty_pb2.Empty())

    async def VolumeRemoveFile(self, stream):
        await self._remove_file(stream)

    async def VolumeRemoveFile2(self, stream):
        await self._remove_file(stream)

    # ---- sandboxes ----

    async def SandboxCreate(self, stream):
        request = await stream.recv_message()
        fake = self.fake
        definition = request.definition
        gpu = definition.resources.gpu_config
        if gpu.gpu_type and gpu.gpu_type not in _GPU_TYPES:
            # Modal's own words: the SDK sends the type as given, upper-cased
            # (modal._utils.function_utils.parse_gpu_config), and the service
            # refuses it, e.g. "A100-70GB is not a valid GPU type".
            raise GRPCError(Status.INVALID_ARGUMENT, f"{gpu.gpu_type} is not a valid GPU type")
        if gpu.gpu_type and not 0 <= gpu.count <= 8:
            raise GRPCError(Status.INVALID_ARGUMENT, f"Invalid GPU: {gpu.gpu_type}:{gpu.count}")
        with fake._lock:
            if request.app_id not in fake._app_ids:
                raise GRPCError(Status.NOT_FOUND, f"App {request.app_id} not found")
            image = fake._images.get(definition.image_id)
            if image is None or not image["built"]:
                raise GRPCError(Status.NOT_FOUND, f"Image {definition.image_id} not found")
            env = {}
            for secret_id in definition.secret_ids:
                if secret_id not in fake._secrets:
                    raise GRPCError(Status.NOT_FOUND, f"Secret {secret_id} not found")
                env.update(fake._secrets[secret_id])
            for mount in definition.volume_mounts:
                fake._volume_dir(mount.volume_id)
            tags = {tag.tag_name: tag.tag_value for tag in request.tags}
            container = _Container(_new_id("sb"), request.app_id, definition, env, definition.image_id, tags)
            fake._containers[container.id] = container
        asyncio.get_running_loop().create_task(fake._schedule(container))
        metadata = api_pb2.SandboxHandleMetadata(app_id=request.app_id)
        await stream.send_message(api_pb2.SandboxCreateResponse(sandbox_id=container.id, metadata=metadata))

    async def SandboxGetTaskId(self, stream):
        request = await stream.recv_message()
        fake = self.fake
        with fake._lock:
            container = fake._container(request.sandbox_id)
            response = api_pb2.SandboxGetTaskIdResponse(task_id=container.task_id)
            if container.result is not None:
                response.task_result.CopyFrom(container.result)
        await stream.send_message(response)

    async def SandboxGetTunnels(self, stream):
        request = await stream.recv_message()
        fake = self.fake
        deadline = time.monotonic() + request.timeout
        while True:
            with fake._lock:
                container = fake._container(request.sandbox_id)
                ready = set(container.tunnels) >= set(container.h2_ports) and container.status == "running"
                finished = container.result
                tunnels = dict(container.tunnels)
            if ready or finished is not None or time.monotonic() >= deadline:
                break
            await asyncio.sleep(_POLL_S)
        response = api_pb2.SandboxGetTunnelsResponse()
        if ready:
            response.result.CopyFrom(_result(api_pb2.GenericResult.GENERIC_STATUS_SUCCESS))
            for port, local in tunnels.items():
                response.tunnels.append(api_pb2.TunnelData(host="localhost", port=local, container_port=port))
        elif finished is not None:
            response.result.CopyFrom(finished)
        else:
            response.result.CopyFrom(_result(api_pb2.GenericResult.GENERIC_STATUS_TIMEOUT))
        await stream.send_message(response)

    async def SandboxWait(self, stream):
        request = await stream.recv_message()
        fake = self.fake
        deadline = time.monotonic() + max(request.timeout, 0)
        while True:
            with fake._lock:
                container = fake._container(request.sandbox_id)
                result = container.result
                app_id = container.app_id
            if result is not None or time.monotonic() >= deadline:
                break
            await asyncio.sleep(_POLL_S)
        response = api_pb2.SandboxWaitResponse(metadata=api_pb2.SandboxHandleMetadata(app_id=app_id))
        if result is not None:
            response.result.CopyFrom(result)
            response.metadata.result.CopyFrom(result)
        await stream.send_message(response)

    async def SandboxTerminate(self, stream):
        request = await stream.recv_message()
        fake = self.fake
        with fake._lock:
            container = fake._container(request.sandbox_id)
            existing = container.result
            fake._stop(container, "terminated")
        response = api_pb2.SandboxTerminateResponse()
        if existing is not None:
            response.existing_result.CopyFrom(existing)
        await stream.send_message(response)

    async def SandboxList(self, stream):
        request = await stream.recv_message()
        fake = self.fake
        wanted = {tag.tag_name: tag.tag_value for tag in request.tags}
        with fake._lock:
            found = [
                container
                for container in fake._containers.values()
                if (not request.app_id or container.app_id == request.app_id)
                and (request.include_finished or container.result is None)
                and wanted.items() <= container.tags.items()
                and (not request.before_timestamp or container.created_at < request.before_timestamp)
            ]
            found.sort(key=lambda container: container.created_at, reverse=True)
            response = api_pb2.SandboxListResponse()
            for container in found[:_LIST_PAGE]:
                info = response.sandboxes.add(
                    id=container.id,
                    app_id=container.app_id,
                    created_at=container.created_at,
                    image_id=container.image_id,
                    timeout_secs=container.definition.timeout_secs,
                )
                info.tags.extend(
                    api_pb2.SandboxTag(tag_name=k, tag_value=v) for k, v in container.tags.items()
                )
                info.metadata.app_id = container.app_id
                info.task_info.id = container.task_id
                info.task_info.sandbox_id = container.id
                if container.result is not None:
                    info.task_info.result.CopyFrom(container.result)
        await stream.send_message(response)

    async def AppFetchLogs(self, stream):
        request = await stream.recv_message()
        fake = self.fake
        since = request.since.seconds + request.since.nanos / 1e9
        until = (
            request.until.seconds + request.until.nanos / 1e9 if request.HasField("until") else float("inf")
        )
        batches = []
        with fake._lock:
            if request.app_id not in fake._app_ids:
                raise GRPCError(Status.NOT_FOUND, f"App {request.app_id} not found")
            for container in fake._containers.values():
                if container.app_id != request.app_id or not container.task_id:
                    continue
                if request.task_id and request.task_id != container.task_id:
                    continue
                if request.sandbox_id and request.sandbox_id != container.id:
                    continue
                items = [
                    (moment, fd, line)
                    for moment, fd, line in container.logs
                    if since <= moment < until
                    and request.source in (api_pb2.FILE_DESCRIPTOR_UNSPECIFIED, fd)
                    and request.search_text in line
                ]
                if request.limit:
                    items = items[-request.limit :]
                if items:
                    batch = api_pb2.TaskLogsBatch(task_id=container.task_id, sandbox_id=container.id)
                    for moment, fd, line in items:
                        batch.items.append(
                            api_pb2.TaskLogs(
                                data=line,
                                timestamp=moment,
                                timestamp_ns=int(moment * 1e9),
                                file_descriptor=fd,
                            )
                        )
                    batches.append(batch)
        await stream.send_message(api_pb2.AppFetchLogsResponse(batches=batches))


def _unimplemented(name):
    async def handler(self, stream):
        with self.fake._lock:
            self.fake._unimplemented.append(name)
        raise GRPCError(Status.UNIMPLEMENTED, f"{name} is not implemented by the fake Modal")

    handler.__name__ = name
    return handler


for _name in _Servicer.__abstractmethods__:
    setattr(_Servicer, _name, _unimplemented(_name))
_Servicer.__abstractmethods__ = frozenset()


# ---- blob uploads (Modal hands out presigned URLs; this serves them on loopback) ------------------


def _blob_handler(fake):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):
            pass

        def do_PUT(self):
            match = re.fullmatch(r"/blobs/([\w-]+)", self.path)
            with fake._lock:
                blob = fake._blobs.get(match.group(1)) if match else None
            if blob is None:
                self._reply(404, b"NoSuchUpload")
                return
            data = self._body()
            md5 = hashlib.md5(data)
            expected_md5 = self.headers.get("Content-MD5") or blob["md5"]
            if expected_md5 and _b64(md5.digest()) != expected_md5:
                self._reply(400, b"The Content-MD5 you specified did not match what we received.")
                return
            if blob["length"] and len(data) != blob["length"]:
                self._reply(400, b"IncompleteBody")
                return
            sha256 = hashlib.sha256(data).hexdigest()
            _write_atomically(os.path.join(fake._store, sha256), data)
            with fake._lock:
                blob["sha256"] = sha256
                blob["uploaded"] = True
            self._reply(200, b"", {"ETag": f'"{md5.hexdigest()}"'})

        def _body(self):
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))

        def _reply(self, status, body, headers=None):
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _b64(digest):
    return base64.b64encode(digest).decode()


def _write_atomically(path, data):
    partial = f"{path}.{os.getpid()}.{threading.get_ident()}.part"
    with open(partial, "wb") as out:
        out.write(data)
    os.replace(partial, path)
