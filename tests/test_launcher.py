# SPDX-License-Identifier: AGPL-3.0-or-later
"""python -m mycelya_torch.run: a script runs unchanged on a machine.

The training script below is written as current public training scripts
are: torch.accelerator picks the device, bf16 autocast, fused-or-foreach
AdamW, gradient clipping, an LR scheduler, and a checkpoint saved and loaded
with map_location. It runs once with plain `python` on the CPU and once
through the launcher, and the losses must match step by step.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import PROVIDER

TRAINING_SCRIPT = textwrap.dedent(
    """
    import argparse, json, sys
    import torch
    from torch import nn
    from torch.nn import functional as F

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("--checkpoint", required=True)
    args = parser.parse_args()

    device = (
        torch.accelerator.current_accelerator()
        if torch.accelerator.is_available()
        else torch.device("cpu")
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 4)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, foreach=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for step in range(args.steps):
        x = torch.randn(16, 8, generator=generator).to(device)
        y = torch.randint(0, 4, (16,), generator=generator).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append([loss.item(), norm.item()])
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, args.checkpoint)
    state = torch.load(args.checkpoint, map_location=device)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    with torch.no_grad():
        check = model(torch.ones(2, 8, device=device)).float().cpu().tolist()
    with open(args.out, "w") as out:
        json.dump({"losses": losses, "check": check, "device": str(device), "argv": sys.argv[1:]}, out)
    """
)


def _env():
    # The child imports torch and mycelya_torch from where this process does.
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def _launcher(*args):
    return [sys.executable, "-m", "mycelya_torch.run", *args]


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(TRAINING_SCRIPT)
    return path


def _train(command, tmp_path, name):
    out, checkpoint = tmp_path / f"{name}.json", tmp_path / f"{name}.pt"
    result = subprocess.run(
        [*command, "--steps", "3", "--out", str(out), "--checkpoint", str(checkpoint)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text()), result.stderr


def test_a_training_script_runs_unchanged_and_matches_the_cpu(script, tmp_path):
    expected, _ = _train([sys.executable, str(script)], tmp_path, "cpu")
    assert expected["device"] == "cpu"
    actual, stderr = _train(_launcher("--provider", PROVIDER, str(script)), tmp_path, "machine")
    assert actual["device"].startswith("mycelya"), actual["device"]
    # The script sees its own arguments, not the launcher's.
    assert actual["argv"][:3] == ["--steps", "3", "--out"] and actual["argv"][-1].endswith("machine.pt")
    assert f"runs on RemoteMachine(provider='{PROVIDER}'" in stderr, stderr
    assert "the current accelerator device" in stderr and "stopped RemoteMachine" in stderr, stderr
    import torch

    # A server process sums bf16 products with its own thread count (local-cuda
    # leaves its client a core), so sums may add in another order: 1e-4
    # relative here, where bf16 itself rounds at 4e-3.
    tolerance = {"rtol": 1e-3, "atol": 1e-4}
    torch.testing.assert_close(torch.tensor(actual["losses"]), torch.tensor(expected["losses"]), **tolerance)
    torch.testing.assert_close(torch.tensor(actual["check"]), torch.tensor(expected["check"]), **tolerance)


@pytest.mark.parametrize(
    "args, named",
    [
        (["--gpu-count", "0"], "--gpu-count"),
        (["--gpu-count", "two"], "--gpu-count"),
        (["--option", "no-equals-sign"], "--option"),
        (["--gpu", "Z80"], "--gpu"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_arguments_are_a_usage_error_naming_the_argument(script, args, named):
    result = subprocess.run(
        _launcher(*args, str(script)), env=_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert "usage:" in result.stderr and named in result.stderr, result.stderr


def test_a_missing_script_is_a_usage_error(tmp_path):
    result = subprocess.run(
        _launcher(str(tmp_path / "nowhere.py")), env=_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "no such file" in result.stderr, result.stderr


def test_the_scripts_exit_status_and_errors_come_through_and_the_machine_stops(tmp_path):
    exits = tmp_path / "exits.py"
    exits.write_text("import sys\nsys.exit(7)\n")
    result = subprocess.run(_launcher(str(exits)), env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 7 and "stopped RemoteMachine" in result.stderr, result.stderr
    raises = tmp_path / "raises.py"
    raises.write_text("raise ValueError('the script failed')\n")
    result = subprocess.run(_launcher(str(raises)), env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "ValueError: the script failed" in result.stderr and "stopped RemoteMachine" in result.stderr


def test_ctrl_c_stops_the_machine(tmp_path):
    waits = tmp_path / "waits.py"
    waits.write_text("import time\nprint('ready', flush=True)\ntime.sleep(120)\n")
    child = subprocess.Popen(
        _launcher("--provider", PROVIDER, str(waits)),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()
        _, stderr = child.communicate()
        pytest.fail(f"the launcher did not exit within 60 s of Ctrl-C; its stderr:\n{stderr}")
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, stderr
    assert "interrupted" in stderr and "stopped RemoteMachine" in stderr, stderr
    assert stderr.count("stopped RemoteMachine") == 1, stderr
