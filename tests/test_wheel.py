# SPDX-License-Identifier: AGPL-3.0-or-later
"""The wheel (//python:wheel) installs and runs outside the repository.

One fresh virtual environment, outside the clone, gets torch==2.13.0 and the
wheel and nothing else, through the server image's own install script
(deploy/install-server.sh). pip takes torch from its configured index and
find-links, as on the image: there, PyPI and its CUDA build; on this machine,
a local mirror holding the CPU build (torch-2.13.0+cpu). Then:
- the quick start runs from it on mock and on local-cuda;
- its `mycelya-run` command runs a script on a mock machine;
- its `mycelya-server` command serves a matmul that matches the CPU's, over
  TCP and in a pod of the RunPod fake started by the image's entry point
  (deploy/entrypoint.sh) from this venv, and the entry point serves with its
  settings from the environment;
- every ELF file it installed finds its libraries in the wheel, in torch, or
  among the few system libraries the manylinux policy lets a wheel assume.
"""

import glob
import os
import re
import shutil
import subprocess

import pytest
from listening_line import listening_address

RUNFILES = os.path.join(os.environ.get("TEST_SRCDIR", ""), "mycelya")
WHEEL_DIR = os.path.join(RUNFILES, "python", "wheel")
QUICKSTART = os.path.join(RUNFILES, "examples", "quickstart.py")
DEPLOY = os.path.join(RUNFILES, "deploy")
ENTRYPOINT = os.path.join(DEPLOY, "entrypoint.sh")

# PEP 600 / auditwheel's manylinux policy: what every manylinux host has.
MANYLINUX_SYSTEM_LIBRARIES = {
    "libc.so.6",
    "libm.so.6",
    "libmvec.so.1",
    "libdl.so.2",
    "librt.so.1",
    "libpthread.so.0",
    "libutil.so.1",
    "libnsl.so.1",
    "libanl.so.1",
    "libresolv.so.2",
    "libstdc++.so.6",
    "libgcc_s.so.1",
    "libatomic.so.1",
    "libz.so.1",
    "libexpat.so.1",
    "linux-vdso.so.1",
    "ld-linux-x86-64.so.2",
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python, site-packages, env) of a fresh venv holding torch and the wheel."""
    (wheel,) = glob.glob(os.path.join(WHEEL_DIR, "*.whl"))
    root = tmp_path_factory.mktemp("wheel-venv")
    bin_dir = root / "venv" / "bin"
    # Nothing of the build: no PYTHONPATH, no runfiles, no MYCELYA_* overrides.
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTHON", "RUNFILES", "MYCELYA", "TEST_", "BUILD_"))
    }
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    install = os.path.join(DEPLOY, "install-server.sh")
    subprocess.run(["sh", install, str(root / "venv"), wheel], check=True, env=env, cwd=root)
    python = str(bin_dir / "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['platlib'])"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout.strip()
    return python, site, env, root


def run(command, env, cwd, timeout=120):
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_the_package_comes_from_the_venv(installed):
    python, site, env, root = installed
    out = run([python, "-c", "import mycelya_torch; print(mycelya_torch.__file__)"], env, root)
    assert out.strip() == os.path.join(site, "mycelya_torch", "__init__.py")


def test_every_provider_plugin_loads_from_the_installed_package(installed):
    python, _, env, root = installed
    out = run([python, "-c", "import mycelya_torch; print(mycelya_torch.available_providers())"], env, root)
    assert out.strip() == "['local-cuda', 'mock', 'modal', 'runpod', 'server']"


# Run by the installed venv's Python: a matmul on the machine, checked against the CPU's.
MATMUL = (
    "import torch, mycelya_torch\n"
    "a, b = torch.randn(64, 32), torch.randn(32, 16)\n"
    "with mycelya_torch.RemoteMachine({arguments}) as m:\n"
    "    remote = (a.to(m.device()) @ b.to(m.device())).cpu()\n"
    "torch.testing.assert_close(remote, a @ b)\n"
    "print('matmul matches the CPU')\n"
)


REMOTE = (
    "import os, torch, mycelya_torch\n"
    "@mycelya_torch.remote\n"
    "def double(x):\n"
    "    return os.getpid(), x * 2\n"
    "with mycelya_torch.RemoteMachine('local-cuda') as m:\n"
    "    pid, y = double(torch.ones(3, device=m.device()))\n"
    "    print(pid != os.getpid(), y.cpu().tolist())\n"
)


def test_remote_functions_run_in_the_installed_servers_python(installed):
    # The server embeds the venv's interpreter through the bundled
    # libmycelya_python_calls.so, with torch's libraries found beside it.
    python, _, env, root = installed
    out = run([python, "-c", REMOTE], env, root)
    assert out.strip().splitlines()[-1] == "True [2.0, 2.0, 2.0]"


def test_the_server_and_runpod_providers_run_from_the_installed_package(installed):
    # Their plugins use the bundled gRPC, OpenSSL and libcurl: a server over
    # TCP, and a pod of the RunPod fake whose container is the image's entry
    # point with this venv's bin first on PATH, as in the image.
    from fakes.runpod_fake import FakeRunPod

    python, _, env, root = installed
    server = os.path.join(os.path.dirname(python), "mycelya-server")
    process, line = start(
        [server, "--listen", "127.0.0.1:0", "--devices", "cpu"], dict(env, MYCELYA_TOKEN="t"), root
    )
    try:
        address = line.rsplit(" ", 1)[1]
        arguments = f"'server', address='{address}', token='t', insecure=True"
        out = run([python, "-c", MATMUL.format(arguments=arguments)], env, root)
        assert out.strip().splitlines()[-1] == "matmul matches the CPU"
    finally:
        stop(process)
    # The pods' PATH is this venv's bin, then the system's, which has no server of its own.
    assert shutil.which("mycelya-server", path="/usr/local/bin:/usr/bin:/bin") is None
    with FakeRunPod(image_bin=os.path.dirname(python), entrypoint=ENTRYPOINT) as fake:
        runpod_env = dict(env, RUNPOD_API_KEY=fake.api_key, RUNPOD_API_BASE_URL=fake.base_url)
        out = run([python, "-c", MATMUL.format(arguments="'runpod', 'H100'")], runpod_env, root)
        assert out.strip().splitlines()[-1] == "matmul matches the CPU"
        assert fake.pods() == []


@pytest.mark.parametrize("provider", ["mock", "local-cuda"])
def test_quick_start_runs_from_the_installed_package(installed, provider):
    python, _, env, root = installed
    out = run([python, QUICKSTART, "--provider", provider], env, root)
    assert "Matches the local CPU result" in out
    assert f"Machine {provider}-" in out


def start(command, env, cwd):
    """Starts a server; returns it and its first line of output."""
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return process, process.stdout.readline().strip()


def stop(process):
    process.terminate()
    process.wait(timeout=30)
    assert process.returncode == 0, process.stderr.read()


def test_mycelya_server_command_serves(installed):
    python, _, env, root = installed
    server = os.path.join(os.path.dirname(python), "mycelya-server")
    process, line = start([server, "--listen", "127.0.0.1:0", "--devices", "cpu"], env, root)
    try:
        assert re.fullmatch(r"127\.0\.0\.1:\d+", listening_address(line) or ""), line
    finally:
        stop(process)


def test_mycelya_run_command_runs_a_script_on_a_machine(installed, tmp_path):
    python, _, env, root = installed
    script = tmp_path / "where.py"
    script.write_text(
        "import sys, torch\n"
        "device = torch.accelerator.current_accelerator()\n"
        "print(torch.ones(2, device=device).sum().item(), sys.argv[1:])\n"
    )
    launcher = os.path.join(os.path.dirname(python), "mycelya-run")
    result = subprocess.run(
        [launcher, str(script), "--flag"], env=env, cwd=root, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2.0 ['--flag']", result.stdout
    assert "runs on RemoteMachine(provider='mock'" in result.stderr, result.stderr


def test_image_entry_point_serves_tls_with_settings_from_the_environment(installed, tmp_path):
    _, _, env, root = installed
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=mycelya", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    settings = {
        "MYCELYA_PORT": "0",
        "MYCELYA_TOKEN": "secret",
        "MYCELYA_TLS_CERT": cert.read_text(),  # PEM text, as a provider passes it
        "MYCELYA_TLS_KEY": key.read_text(),
        "MYCELYA_DEVICES": "cpu",
        "MYCELYA_STATE_DIR": str(tmp_path / "state" / "folder"),
    }
    process, line = start(["sh", ENTRYPOINT], {**env, **settings}, root)
    try:
        assert re.fullmatch(r"0\.0\.0\.0:\d+", listening_address(line) or ""), line
        assert (tmp_path / "state" / "folder").is_dir()  # made at start, for pauses
    finally:
        stop(process)


def test_image_entry_point_refuses_a_public_port_without_a_token(installed):
    _, _, env, root = installed
    result = subprocess.run(
        ["sh", ENTRYPOINT],
        env={**env, "MYCELYA_PORT": "0", "MYCELYA_INSECURE": "1"},
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "token" in result.stderr


def test_image_entry_point_stops_after_the_idle_timeout(installed):
    _, _, env, root = installed
    settings = {
        "MYCELYA_PORT": "0",
        "MYCELYA_TOKEN": "secret",
        "MYCELYA_INSECURE": "1",
        "MYCELYA_IDLE_TIMEOUT": "1",
    }
    process, line = start(["sh", ENTRYPOINT], {**env, **settings}, root)
    assert (listening_address(line) or "").startswith("0.0.0.0:"), line
    assert process.wait(timeout=60) == 0
    assert "--idle-timeout" in process.stderr.read()


def elf_files(folder):
    for path in sorted(glob.glob(os.path.join(folder, "*"))):
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            if f.read(4) == b"\x7fELF":
                yield path


def test_every_elf_file_resolves_only_wheel_torch_and_manylinux_libraries(installed):
    _, site, env, root = installed
    files = [
        *elf_files(os.path.join(site, "mycelya_torch")),
        *elf_files(os.path.join(site, "mycelya_torch.libs")),
    ]
    # The extension, libmycelya_wire, two providers, the server, and the
    # bundled gRPC/protobuf/abseil/OpenSSL libraries.
    assert len(files) > 10
    assert any(path.endswith("/mycelya-server") for path in files)
    problems = []
    for path in files:
        out = run(["ldd", path], env, root)
        for line in out.splitlines():
            line = line.strip()
            if not line or line == "statically linked":
                continue
            name, _, target = line.partition(" => ")
            name = os.path.basename(name.split()[0])
            target = target.split(" (")[0].strip()
            if "not found" in line:
                problems.append(f"{path}: {name} not found")
            elif target.startswith(site + "/"):
                continue  # the wheel's own libraries, or torch's
            elif name not in MANYLINUX_SYSTEM_LIBRARIES:
                problems.append(f"{path}: {name} from the system ({target or line})")
    assert not problems, "\n".join(problems)


def test_the_modal_driver_packs_the_installed_package_into_the_same_wheel(installed, tmp_path):
    # RemoteMachine("modal", ...) without wheel= puts this wheel into the
    # machine's image: the files pip installed, packed again.
    import zipfile

    python, _, env, root = installed
    (original,) = glob.glob(os.path.join(WHEEL_DIR, "*.whl"))
    script = "import sys, mycelya_torch._modal_driver as d; print(d.installed_wheel(sys.argv[1]))"
    packed = run([python, "-c", script, str(tmp_path)], env, root).strip()
    assert os.path.basename(packed) == os.path.basename(original)
    with zipfile.ZipFile(original) as a, zipfile.ZipFile(packed) as b:
        names = sorted(n for n in a.namelist() if not n.endswith("/RECORD"))
        assert sorted(n for n in b.namelist() if not n.endswith("/RECORD")) == names
        for name in names:
            assert a.read(name) == b.read(name), name
        assert (b.getinfo("mycelya_torch/mycelya-server").external_attr >> 16) & 0o111
        record = b.read(next(n for n in b.namelist() if n.endswith("/RECORD"))).decode()
        assert len(record.splitlines()) == len(names) + 1
