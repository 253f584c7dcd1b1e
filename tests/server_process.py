# SPDX-License-Identifier: AGPL-3.0-or-later
"""A real mycelya-server on loopback TCP for tests, and test certificates made by openssl."""

import os
import signal
import subprocess

from listening_line import listening_address

import mycelya_torch


def server_binary():
    """The mycelya-server shipped in the package folder."""
    return os.path.join(os.path.dirname(mycelya_torch.__file__), "mycelya-server")


def _openssl(folder, *args):
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)


def make_test_pki(folder):
    """Writes, into `folder`: ca.pem/ca.key, a server certificate server.pem/server.key that
    the CA signed for localhost and 127.0.0.1, and other.pem/other.key, a self-signed
    certificate for the same names that nothing vouches for. Returns `folder`."""
    names = "subjectAltName=DNS:localhost,IP:127.0.0.1"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl(
        folder,
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=test CA",
        "-days",
        "2",
    )
    _openssl(folder, "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    with open(os.path.join(folder, "names.ext"), "w") as ext:
        ext.write(names + "\n")
    _openssl(
        folder, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "names.ext",
    )  # fmt: skip
    _openssl(
        folder, "req", "-x509", *ec, "-keyout", "other.key", "-out", "other.pem",
        "-subj", "/CN=localhost", "-days", "2", "-addext", names,
    )  # fmt: skip
    return folder


class ServerProcess:
    """mycelya-server listening on 127.0.0.1 (a free port), stopped by stop() or `with`."""

    def __init__(self, *flags, token="test-token", env=None, log_path=None):
        full_env = dict(os.environ, **(env or {}))
        full_env.pop("MYCELYA_TOKEN", None)
        if token is not None:
            full_env["MYCELYA_TOKEN"] = token
        self.log_path = log_path
        log = open(log_path, "wb") if log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [server_binary(), "--listen=127.0.0.1:0", "--devices=cpu", *flags],
            stdout=subprocess.PIPE,
            stderr=log,
            env=full_env,
        )
        if log_path:
            log.close()
        line = self.process.stdout.readline().decode()
        address = listening_address(line)
        if address is None:
            self.stop()
            raise RuntimeError(f"mycelya-server did not start: {line!r}")
        self.address = address.strip()
        self.port = int(self.address.rsplit(":", 1)[1])

    def kill(self):
        """SIGKILL: the server is gone at once, as a crashed host would be."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
