# SPDX-License-Identifier: AGPL-3.0-or-later
"""The machine's own package folder, where ``machine.pip_install`` and
``packages=`` install (run on the machine, by ``_remote_runtime.pip_install``).

pip never writes into the environment the machine's Python runs from: that
may be a developer's virtual environment (``local-cuda`` runs its server from
the client's, and ``mock`` runs the machine inside the client's process). The
folder is made on the first install, in the machine's temporary folder, put
first on ``sys.path`` so that what it holds wins over an older installed
version, and removed when the process exits. One process serves one machine
(on ``mock``, the client's process is where all its mock machines run, and
they share one folder).
"""

import atexit
import importlib
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile

_prefix = None
# Its site folders, once made: first on sys.path, and on pip's PYTHONPATH.
_folders = []


def folders():
    """The site folders installs went to so far (none before the first)."""
    return list(_folders)


def _prefix_made():
    global _prefix
    if _prefix is None:
        prefix = tempfile.mkdtemp(prefix="mycelya-packages-")
        atexit.register(shutil.rmtree, prefix, True)
        # Where pip --prefix puts pure and platform packages under it.
        paths = sysconfig.get_paths("posix_prefix", vars={"base": prefix, "platbase": prefix})
        for folder in dict.fromkeys([paths["purelib"], paths["platlib"]]):
            os.makedirs(folder, exist_ok=True)
            # addsitedir also runs the folder's .pth files; first on the path.
            site.addsitedir(folder)
            sys.path.remove(folder)
            sys.path.insert(0, folder)
            _folders.append(folder)
        _prefix = prefix
    return _prefix


def install(packages):
    """pip-installs `packages` into the folder; returns pip's output. Raises
    RuntimeError with pip's error when it fails."""
    prefix = _prefix_made()
    command = [
        sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
        "--prefix", prefix, *packages,
    ]  # fmt: skip
    # pip resolves against what is installed: the environment, and (through
    # PYTHONPATH) what earlier installs put in the folder.
    # No empty entry: one would put the current folder on pip's path.
    search = [*_folders, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(search))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip())[-4000:]
        raise RuntimeError(f"pip install {' '.join(packages)} failed (exit {done.returncode}):\n{output}")
    importlib.invalidate_caches()
    return done.stdout
