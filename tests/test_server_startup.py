# SPDX-License-Identifier: AGPL-3.0-or-later
"""mycelya-server's start-up: each flag's error path is one line on stderr and
a non-zero exit (2 for a bad invocation, 1 for a runtime failure), never an
abort; an unusable --state-dir does not stop the server, it refuses pauses."""

import os
import re
import subprocess

import pytest
import torch
from server_process import ServerProcess, server_binary

import mycelya_torch

TOKEN = "test-token"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{tmp}: a folder; {empty}: an empty file; {garbage}: a file that is no PEM; {file}: a file."""
    folder = tmp_path_factory.mktemp("startup")
    (folder / "empty").write_text("")
    (folder / "garbage").write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    (folder / "file").write_text("a file, not a folder\n")
    return {"tmp": folder, "empty": folder / "empty", "garbage": folder / "garbage", "file": folder / "file"}


# (flags, environment, exit status, what the one line says)
FLAG_ERRORS = [
    (["--bogus"], {}, 2, r"unknown flag --bogus"),
    (["stray"], {}, 2, r'unexpected argument "stray"'),
    (["--help=yes"], {}, 2, r"--help takes no value"),
    (["--insecure=1"], {}, 2, r"--insecure takes no value"),
    (["--no-python=1"], {}, 2, r"--no-python takes no value"),
    (["--exit-with-parent=1"], {}, 2, r"--exit-with-parent takes no value"),
    (["--listen"], {}, 2, r"--listen needs a value"),
    (["--listen=0.0.0.0:0"], {}, 2, r"reachable from other machines, so a token is required"),
    (["--listen=0.0.0.0:0"], {"MYCELYA_TOKEN": TOKEN}, 2, r"so TLS is required"),
    (
        ["--listen=unix:/nonexistent-mycelya-folder/server.sock"],
        {},
        1,
        r"cannot listen on unix:/nonexistent-mycelya-folder/server.sock: .+",
    ),
    (
        ["--listen=unix:/" + "x" * 120 + "/server.sock"],
        {},
        1,
        r"cannot listen on unix:/x+/server.sock: .*characters",
    ),
    (["--token-file={tmp}/none"], {}, 2, r"cannot read the token file .*none"),
    (["--token-file={empty}"], {}, 2, r"the token file .*empty is empty"),
    (["--token-file={file}", "--token-env=X"], {}, 2, r"one of --token-file and --token-env, not both"),
    (["--token-env=MYCELYA_TEST_UNSET"], {}, 2, r"MYCELYA_TEST_UNSET is not set"),
    (["--devices=gpu"], {}, 2, r'--devices: unknown device "gpu"'),
    (["--devices=cuda:x"], {}, 2, r'cannot read the CUDA index in "cuda:x"'),
    (["--devices=cuda:99"], {}, 2, r"--devices asks for cuda:99, but .*CUDA device"),
    (["--devices=cpu,cpu"], {}, 2, r"--devices lists cpu twice"),
    (["--devices="], {}, 2, r"--devices is empty"),
    (["--max-message-bytes=1"], {}, 2, r"--max-message-bytes must be a number of bytes"),
    (["--memory-limit=0"], {}, 2, r"--memory-limit must be a number of bytes"),
    (["--memory-limit=1000", "--session-memory-limit=2000"], {}, 2, r"--session-memory-limit must be"),
    (["--max-sessions=0"], {}, 2, r"--max-sessions must be a number of sessions"),
    (["--idle-timeout=-1"], {}, 2, r"--idle-timeout must be a number of seconds"),
    (["--state-dir="], {}, 2, r"--state-dir needs a folder"),
    (["--tls-cert={tmp}/none.pem", "--tls-key={file}"], {}, 2, r"cannot read the TLS certificate"),
    (["--tls-cert={file}"], {}, 2, r"TLS needs both a certificate and its key"),
    ([], {"MYCELYA_TLS_CERT": "{tmp}/none.pem"}, 2, r"cannot read the TLS certificate"),
    (["--tls-cert={garbage}", "--tls-key={garbage}"], {}, 1, r"cannot listen on 127.0.0.1:0: .*cert"),
]


def _filled(text, files):
    return text.format(**files)


@pytest.mark.parametrize(
    "flags, env, status, message", FLAG_ERRORS, ids=[" ".join(c[0]) or "env" for c in FLAG_ERRORS]
)
def test_each_start_up_error_is_one_line_and_a_nonzero_exit(files, flags, env, status, message):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MYCELYA_T")}
    full_env.update({name: _filled(value, files) for name, value in env.items()})
    # The host's CUDA devices are no business of these cases, unless they name devices.
    devices = [] if any(flag.startswith("--devices") for flag in flags) else ["--devices=cpu"]
    done = subprocess.run(
        [server_binary(), *devices, *[_filled(flag, files) for flag in flags]],
        capture_output=True,
        text=True,
        env=full_env,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert done.stdout == "", "nothing may claim to listen"
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("mycelya-server: ")
    assert re.search(message, lines[0]), lines[0]
    assert done.returncode == status, done.stderr


def test_an_unusable_state_dir_only_refuses_pauses(files):
    state = files["file"] / "state"  # below a file: no folder can be made there
    log = files["tmp"] / "unusable-state.log"
    with ServerProcess(f"--state-dir={state}", token=TOKEN, log_path=log) as server:
        assert re.search(
            r"warning: --state-dir .*/file/state is unusable \(.*Not a directory\)", log.read_text()
        )
        machine = mycelya_torch.RemoteMachine("server", address=server.address, token=TOKEN, insecure=True)
        values = torch.randn(64, 8)
        x = values.to(machine.device())
        with pytest.raises(RuntimeError, match=r"/file/state.*Not a directory"):
            machine.pause()
        assert machine.running and not machine.paused
        # No tensor was lost, and the machine goes on working.
        torch.testing.assert_close(x.cpu(), values)
        torch.testing.assert_close((x * 2).cpu(), values * 2)
        machine.stop()
        assert server.process.poll() is None, "the server kept serving"
