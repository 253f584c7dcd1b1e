# SPDX-License-Identifier: AGPL-3.0-or-later
"""Drives Modal for the `modal` provider, through Modal's public Python SDK.

The C++ plugin runs this file as a plain script with the user's Python:

    python _modal_driver.py start|terminate|logs|discard

Each command reads one JSON object from stdin and writes JSON lines to stdout, one
object a line: progress lines ({"stage": ...}) and then exactly one final line,
{"ok": {...}} (exit status 0) or {"error": "...", "kind": "auth"|"capacity"|"other"}
(exit status 1). Everything else (the SDK's warnings, tracebacks) goes to stderr.

Stdlib and `modal` only: this must not import torch or mycelya_torch.
"""

import asyncio
import atexit
import json
import os
import posixpath
import re
import secrets
import shutil
import signal
import sys
import tempfile

_OUT = sys.stdout  # this protocol's lines (main() sends everything else to stderr)
_LAUNCH_TAG = "mycelya-launch"
_MISSING_CREDENTIALS = (
    "No Modal credentials found: there is no profile in {config} and MODAL_TOKEN_ID / "
    "MODAL_TOKEN_SECRET are not set. Run `modal token new` (or `python -m modal token new` with "
    "this Python) to create a token and save it to {config}, or set both MODAL_TOKEN_ID and "
    "MODAL_TOKEN_SECRET, then try again."
)


class DriverError(Exception):
    """A failure to report as {"error": message, "kind": kind}."""

    def __init__(self, message, kind="other"):
        super().__init__(message)
        self.kind = kind


def emit(**fields):
    _OUT.write(json.dumps(fields) + "\n")
    _OUT.flush()


def stage(name, **extra):
    emit(stage=name, **extra)


def read_request():
    text = sys.stdin.read()
    try:
        request = json.loads(text)
    except ValueError as error:
        raise DriverError(f"the request on stdin is not JSON: {error}") from None
    if not isinstance(request, dict):
        raise DriverError("the request on stdin must be one JSON object")
    return request


def field(request, name, kind, required=True, default=None):
    if name not in request or request[name] is None:
        if required:
            raise DriverError(f"the request lacks {name!r}")
        return default
    value = request[name]
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise DriverError(f"the request's {name!r} has the wrong type ({type(value).__name__})")
    return value


def check_credentials():
    """Fails with kind auth when the SDK would find no credentials at all."""
    import modal.config

    settings = modal.config.config
    if settings.get("token_id") and settings.get("token_secret"):
        return
    if settings.get("oauth_refresh_token") or settings.get("oauth_client_id"):
        return  # OAuth credentials: the SDK checks them itself
    raise DriverError(_MISSING_CREDENTIALS.format(config=modal.config.user_config_path), "auth")


def classify(error):
    """A DriverError for an exception the SDK raised."""
    if isinstance(error, DriverError):
        return error
    import modal.exception as exc

    message = str(error) or type(error).__name__
    if isinstance(error, exc.AuthError | exc.PermissionDeniedError):
        if message.startswith("Token missing"):
            import modal.config

            return DriverError(_MISSING_CREDENTIALS.format(config=modal.config.user_config_path), "auth")
        return DriverError(
            f"Modal refused the credentials: {message} Check MODAL_TOKEN_ID / MODAL_TOKEN_SECRET or the "
            "active profile in ~/.modal.toml, or create a new token with `modal token new`.",
            "auth",
        )
    if isinstance(error, exc.ResourceExhaustedError):
        return DriverError(f"Modal has no capacity for this sandbox right now: {message}", "capacity")
    if isinstance(error, exc.ConnectionError):
        import modal.config

        url = modal.config.config.get("server_url")
        return DriverError(f"Could not reach Modal at {url}: {message}")
    if isinstance(error, exc.Error):
        return DriverError(f"Modal: {message}")
    return DriverError(f"{type(error).__name__}: {message}")


# ---- start ---------------------------------------------------------------------------------


# Files of an installed distribution that pip writes itself, not the wheel.
_INSTALLER_FILES = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}


def installed_wheel(folder):
    """Writes the wheel this mycelya_torch was installed from into `folder` and returns its
    path: every file pip's RECORD lists inside site-packages, with a fresh RECORD. The machine's
    image installs it, so a pip-installed client needs no wheel= of its own."""
    import base64
    import hashlib
    import zipfile
    from importlib import metadata

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        dist = metadata.distribution("mycelya_torch")
    except metadata.PackageNotFoundError:
        dist = None
    if dist is None or os.path.realpath(dist.locate_file("mycelya_torch")) != os.path.realpath(here):
        raise DriverError(
            "this mycelya_torch was not installed from a wheel (it runs from a source tree), so "
            "there is none to put into the machine's image: pass wheel=\"path/to/mycelya_torch-"
            '...whl" (bazel build //python:wheel makes it) or image='
        )
    wheel_file = (dist.read_text("WHEEL") or "").splitlines()
    tags = [line.split(":", 1)[1].strip() for line in wheel_file if line.startswith("Tag:")]
    if len(tags) != 1:
        raise DriverError(f"the installed mycelya_torch names {len(tags)} wheel tags; pass wheel= instead")
    records, dist_info = [], None
    path = os.path.join(folder, f"mycelya_torch-{dist.version}-{tags[0]}.whl")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for file in dist.files or []:
            name = file.as_posix()
            parts = name.split("/")
            if name.startswith("../") or "__pycache__" in parts or name.endswith(".pyc"):
                continue  # console scripts (pip makes them again) and bytecode
            if parts[0].endswith(".dist-info"):
                dist_info = parts[0]
                if parts[-1] in _INSTALLER_FILES:
                    continue
            located = file.locate()
            with open(located, "rb") as source:
                data = source.read()
            entry = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            entry.external_attr = (os.stat(located).st_mode & 0o777 | 0o100000) << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(entry, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{name},sha256={digest},{len(data)}")
        if dist_info is None:
            raise DriverError("the installed mycelya_torch lists no .dist-info; pass wheel= instead")
        records.append(f"{dist_info}/RECORD,,")
        wheel.writestr(f"{dist_info}/RECORD", "\n".join(records) + "\n")
    return path


def build_image(request):
    import modal

    torch_version = field(request, "torch_version", str, required=False)
    python_version = field(request, "python_version", str, required=False)
    wheel = field(request, "wheel", str, required=False)
    image_ref = field(request, "image", str, required=False)
    packages = field(request, "packages", list, required=False, default=[])
    if not all(isinstance(package, str) and package for package in packages):
        raise DriverError("the request's 'packages' must be a list of non-empty strings")
    if wheel is not None:
        if not os.path.isabs(wheel) or not os.path.isfile(wheel):
            raise DriverError(f"the wheel {wheel!r} is not an existing file (an absolute path)")
    if image_ref:
        # A ready image: it brings Python and torch (and usually the server) itself.
        image = modal.Image.from_registry(image_ref)
        if packages:
            image = image.pip_install(*packages)
    else:
        if not torch_version:
            raise DriverError("the request needs 'torch_version' when it names no 'image'")
        image = modal.Image.debian_slim(python_version=python_version)
        # torch (with the extra packages) is a layer of its own: a new wheel reuses it from cache.
        image = image.pip_install(f"torch=={torch_version}", *packages)
    if wheel is None and not image_ref:
        # The wheel this client was installed from, rebuilt from its files.
        stage("packing the installed mycelya_torch into a wheel")
        folder = tempfile.mkdtemp(prefix="mycelya-wheel-")
        atexit.register(shutil.rmtree, folder, True)
        wheel = installed_wheel(folder)
    if wheel is not None:
        inside = posixpath.join("/opt/mycelya", os.path.basename(wheel))
        image = image.add_local_file(wheel, inside, copy=True).pip_install(inside)
    return image


async def start(request):
    import modal
    import modal.exception

    app_name = field(request, "app", str)
    gpu = field(request, "gpu", str, required=False)
    env = field(request, "env", dict, required=False, default={})
    command = field(request, "command", list)
    port = field(request, "port", int)
    timeout_s = field(request, "timeout_s", int, required=False, default=86400)
    volume_name = field(request, "volume", str, required=False)
    volume_mount = field(request, "volume_mount", str, required=False, default="/mycelya-state")
    schedule_timeout_s = field(request, "schedule_timeout_s", int | float, required=False)
    tunnel_timeout_s = field(request, "tunnel_timeout_s", int, required=False, default=120)
    if not command or not all(isinstance(arg, str) for arg in command):
        raise DriverError("the request's 'command' must be a non-empty list of strings")
    if not all(isinstance(key, str) and isinstance(value, str) for key, value in env.items()):
        raise DriverError("the request's 'env' must map strings to strings")

    check_credentials()
    image = build_image(request)
    app = await modal.App.lookup.aio(app_name, create_if_missing=True)

    stage("building the image")
    await image.build.aio(app)

    volumes = {}
    if volume_name:
        volumes[volume_mount] = modal.Volume.from_name(volume_name, create_if_missing=True)

    stage("scheduling the sandbox")
    # Every sandbox of this start carries this tag, so a failed or stopped start can find and
    # terminate it even when Sandbox.create never returned its id (stopped mid-call).
    launch = secrets.token_hex(12)
    sandbox = None
    try:
        # Sandbox.create returns once Modal scheduled the sandbox; cancelled (a scheduling
        # timeout, or this driver told to stop) the SDK terminates the unscheduled sandbox too.
        creating = modal.Sandbox.create.aio(
            *command,
            app=app,
            image=image,
            gpu=gpu,
            env=env or None,
            h2_ports=[port],
            timeout=timeout_s,
            volumes=volumes,
            tags={_LAUNCH_TAG: launch},
        )
        try:
            sandbox = await asyncio.wait_for(creating, schedule_timeout_s)
        except asyncio.TimeoutError:  # noqa: UP041 (not the builtin before Python 3.11)
            raise DriverError(
                f"Modal did not schedule the sandbox ({gpu or 'no GPU'}) within {schedule_timeout_s:g} s: "
                "no capacity for it right now",
                "capacity",
            ) from None

        stage("waiting for the tunnel", sandbox_id=sandbox.object_id)
        try:
            tunnels = await sandbox.tunnels.aio(timeout=tunnel_timeout_s)
        except modal.exception.SandboxTimeoutError:
            raise DriverError(f"the sandbox's tunnel did not open within {tunnel_timeout_s} s") from None
        if port not in tunnels:
            exit_code = await sandbox.poll.aio()
            if exit_code is not None:
                raise DriverError(f"the sandbox exited (status {exit_code}) before its tunnel opened")
            raise DriverError(f"Modal reported no tunnel for port {port} (tunnels: {sorted(tunnels)})")
        tunnel = tunnels[port]
        emit(ok={"sandbox_id": sandbox.object_id, "host": tunnel.host, "port": tunnel.port})
    except BaseException:
        # Nothing may keep running (and billing) when start fails.
        await asyncio.shield(clean_up(app, launch, sandbox))
        raise


async def clean_up(app, launch, sandbox):
    """Terminates the sandbox of a failed start, and any other sandbox carrying its tag."""
    import modal

    found = [sandbox] if sandbox is not None else []
    try:
        async for other in modal.Sandbox.list.aio(app_id=app.app_id, tags={_LAUNCH_TAG: launch}):
            if sandbox is None or other.object_id != sandbox.object_id:
                found.append(other)
    except Exception as error:
        print(f"could not list this start's sandboxes: {error}", file=sys.stderr)
    for each in found:
        try:
            await each.terminate.aio()
        except Exception as error:
            print(f"could not terminate sandbox {each.object_id}: {error}", file=sys.stderr)


# ---- terminate, logs, discard ----------------------------------------------------------------


async def find_sandbox(sandbox_id):
    """The sandbox, or None when Modal does not know it."""
    import modal
    import modal.exception

    try:
        return await modal.Sandbox.from_id.aio(sandbox_id)
    except modal.exception.NotFoundError:
        return None


async def terminate(request):
    sandbox_id = field(request, "sandbox_id", str)
    wait_s = field(request, "wait_s", int | float, required=False, default=30)
    check_credentials()
    sandbox = await find_sandbox(sandbox_id)
    if sandbox is None:
        emit(ok={"finished": True})
        return
    import modal.exception

    try:
        await sandbox.terminate.aio()
    except modal.exception.NotFoundError:
        emit(ok={"finished": True})
        return
    # Volumes get their final commit as the sandbox stops: wait for that (bounded).
    finished = True
    try:
        await asyncio.wait_for(sandbox.wait.aio(raise_on_termination=False), wait_s)
    except asyncio.TimeoutError:  # noqa: UP041 (not the builtin before Python 3.11)
        finished = False
    emit(ok={"finished": finished})


async def logs(request):
    sandbox_id = field(request, "sandbox_id", str)
    lines = field(request, "lines", int, required=False, default=30)
    text = ""
    try:
        check_credentials()
        sandbox = await find_sandbox(sandbox_id)
        if sandbox is not None and lines > 0:
            entries = [entry.message async for entry in sandbox.logs.tail.aio(lines)]
            text = "\n".join("".join(entries).splitlines()[-lines:])
    except Exception as error:  # best effort: no log is not a failure
        print(f"could not read the sandbox's log: {classify(error)}", file=sys.stderr)
    emit(ok={"log": text})


async def discard(request):
    import modal
    import modal.exception

    volume_name = field(request, "volume", str)
    path = field(request, "path", str)
    parts = path.split("/")
    if path.startswith("/") or not path or any(part in ("", ".", "..") for part in parts):
        raise DriverError(f"refusing to discard {path!r}: not a plain relative path inside the volume")
    check_credentials()
    volume = modal.Volume.from_name(volume_name)
    try:
        await volume.remove_file.aio(path, recursive=True)
    except (FileNotFoundError, modal.exception.NotFoundError):
        pass  # no such folder, or no such volume: nothing to discard
    emit(ok={})


COMMANDS = {"start": start, "terminate": terminate, "logs": logs, "discard": discard}


async def run(command, request):
    # SIGTERM / SIGINT cancel the command, which then cleans up (a failed start terminates
    # its sandbox) and reports {"error": ..., "kind": "other"}.
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    await COMMANDS[command](request)


def import_modal():
    try:
        import modal  # noqa: F401
    except ImportError as error:
        raise DriverError(
            f"the Modal SDK is not installed for {sys.executable} ({error}); "
            f"install it with `{sys.executable} -m pip install modal`"
        ) from None


def main(argv):
    # Whatever the SDK prints goes to stderr, so stdout holds only this protocol's lines.
    sys.stdout = sys.stderr
    # GPU sandboxes always use Modal's v1 sandbox backend; pin CPU-only ones to it as well,
    # so both behave the same (the SDK reads the setting from the environment when it acts).
    os.environ.setdefault("MODAL_SANDBOX_V2", "0")
    if len(argv) != 2 or argv[1] not in COMMANDS:
        emit(error=f"usage: {os.path.basename(argv[0])} {'|'.join(COMMANDS)} < request.json", kind="other")
        return 1
    try:
        request = read_request()
        import_modal()
        asyncio.run(run(argv[1], request))
    except (asyncio.CancelledError, KeyboardInterrupt):
        emit(error="stopped before it finished (cancelled)", kind="other")
        return 1
    except Exception as error:
        failure = classify(error)
        if not isinstance(error, DriverError):
            import traceback

            traceback.print_exc(file=sys.stderr)
        emit(error=re.sub(r"\s+", " ", str(failure)).strip(), kind=failure.kind)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
