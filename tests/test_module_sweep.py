# SPDX-License-Identifier: AGPL-3.0-or-later
"""The ModuleInfo sweep (tests/module_sweep.py) against the committed table.

Each module is one test case: it fails when mycelya returns values that
differ from CPU's, or when a sample raises or has other strides than CPU's
where docs/module-sweep.md does not record that outcome for that sample (a
row the table lacks must pass every sample), or when a row passes fewer
samples than the table records. The last case checks the 99.9% bar and
leaves this run's table in Bazel's undeclared outputs.

MYCELYA_SWEEP_STRIDE=N sweeps one sample in N of each module, in a rotation
that changes daily (opinfo_sweep.Rotation, as for the OpInfo sweep);
MYCELYA_SWEEP_ROTATION=i repeats rotation i.
"""

import os
import sys

import module_sweep
import opinfo_sweep
import pytest
import torch
from torch import nn
from torch.testing._internal.common_modules import FunctionInput, ModuleInfo, ModuleInput

from conftest import PROVIDER

TABLE = "docs/module-sweep.md"
EXPECTED = opinfo_sweep.expected_table("module-sweep.md")
MODULES = module_sweep.sweep_modules()
ROTATION = opinfo_sweep.rotation_from_environment()
SCOPE = f" [{ROTATION}]" if ROTATION else ""
results = {}


@pytest.fixture(scope="module")
def target(machine, device):
    return opinfo_sweep.target_of(machine, device)


class _OffByOneOnTheDevice(nn.Module):
    """A module whose output (and so its input's gradient) is off by one on a mycelya device."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return x * self.weight + (1 if x.device.type == "mycelya" else 0)


class _CountsCallsInABuffer(nn.Module):
    """A module whose buffer ends one higher on a mycelya device."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 2 if x.device.type == "mycelya" else 1
        return x * 2


def _info(module_cls):
    def inputs(info, device, dtype, requires_grad, training, **kwargs):
        x = torch.ones(3, device=device, dtype=dtype, requires_grad=requires_grad)
        return [ModuleInput(FunctionInput(), forward_input=FunctionInput(x))]

    return ModuleInfo(module_cls, module_inputs_func=inputs)


@pytest.mark.parametrize("module_cls", [_OffByOneOnTheDevice, _CountsCallsInABuffer])
def test_a_module_that_differs_on_the_device_is_wrong(module_cls, target):
    rows = module_sweep.sweep_module(_info(module_cls), target)
    assert len(rows) == 4, rows  # float32 and float64, train and eval
    for key, result in rows.items():
        assert (result.passed, result.wrong) == (0, 1), (key, result)


def test_a_module_that_matches_passes(target):
    rows = module_sweep.sweep_module(_info(nn.Identity), target)
    assert [(r.passed, r.total) for r in rows.values()] == [(1, 1)] * 4, rows


@pytest.mark.parametrize("info", MODULES, ids=[info.name for info in MODULES])
def test_module_matches_cpu(info, target, capsys):
    if not results:
        with capsys.disabled():
            print(f"\nModuleInfo sweep: {ROTATION or 'every sample'}", file=sys.stderr, flush=True)
    rows = module_sweep.sweep_module(info, target, ROTATION)
    results.update(rows)
    problems = []
    for key, result in rows.items():
        wrong = [text for text in result.reasons if text.startswith("wrong")]
        if result.wrong:
            problems.append(f"{key}: mycelya returned values that differ from CPU: {wrong}")
        expected = EXPECTED.get(key)
        unexpected = opinfo_sweep.unexpected_outcomes(result, expected)
        recorded = expected.failing if expected else "no row: bazel run //tests:module_sweep_update adds it"
        if unexpected:
            problems.append(
                f"{key}: samples {unexpected} did not pass; the table records {recorded}; "
                f"reasons: {dict(result.reasons)}"
            )
        if ROTATION is None and expected is not None and result.passed < expected.passed:
            problems.append(f"{key}: {result.passed} samples pass, the table has {expected.passed}")
    assert not problems, f"{info.name}{SCOPE}: " + "\n".join(problems)


def test_pass_rate_and_table():
    swept = {key for info in MODULES for key, _, _ in module_sweep.configurations(info)}
    assert swept <= set(results), "run the whole file: the per-module cases fill the results"
    total = opinfo_sweep.totals({key: results[key] for key in swept})
    outputs = os.environ.get("TEST_UNDECLARED_OUTPUTS_DIR")
    if outputs and ROTATION is None:
        with open(os.path.join(outputs, "module-sweep.md"), "w") as out:
            out.write(module_sweep.format_table({key: results[key] for key in swept}, PROVIDER))
    assert total["wrong"] == 0, f"wrong values{SCOPE}: {dict(total)}"
    assert total["rate"] >= 0.999, f"pass rate {total['rate']:.4f} is below 99.9%{SCOPE}: {dict(total)}"
    assert EXPECTED, f"{TABLE} is missing or has no rows: run bazel run //tests:module_sweep_update"
