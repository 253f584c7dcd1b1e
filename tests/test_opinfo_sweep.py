# SPDX-License-Identifier: AGPL-3.0-or-later
"""The OpInfo sweep (tests/opinfo_sweep.py) against the committed table.

Each op is one test case: it fails when mycelya returns values that differ
from CPU's, or when the op passes fewer samples than docs/opinfo-sweep.md
records. The last case checks the 95% bar and leaves this run's table in
Bazel's undeclared outputs (bazel-testlogs/.../test.outputs).

MYCELYA_SWEEP_SAMPLES=N sweeps only the first N float32 samples of each op
(and no other dtype): what a provider whose ops take the same client and
executor path as mock's, over another transport, needs. Such a run fails when
an op returns wrong values or raises on more samples than the table records.
"""

import os

import opinfo_sweep
import pytest

from conftest import PROVIDER

TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "opinfo-sweep.md")
EXPECTED = opinfo_sweep.parse_table(open(TABLE).read()) if os.path.exists(TABLE) else {}
OPS = opinfo_sweep.sweep_ops()
SAMPLES_PER_OP = int(os.environ["MYCELYA_SWEEP_SAMPLES"]) if os.environ.get("MYCELYA_SWEEP_SAMPLES") else None
results = {}


@pytest.mark.parametrize("op", OPS, ids=[opinfo_sweep.op_key(op) for op in OPS])
def test_op_matches_cpu(op, device):
    key = opinfo_sweep.op_key(op)
    result = results[key] = opinfo_sweep.sweep_op(op, device, SAMPLES_PER_OP)
    wrong = [text for text in result.reasons if text.startswith("wrong:")]
    assert result.wrong == 0, f"{key}: mycelya returned values that differ from CPU: {wrong}"
    expected = EXPECTED.get(key)
    if expected is None:
        return
    if SAMPLES_PER_OP is None:
        assert result.passed >= expected.passed, (
            f"{key}: {result.passed} samples pass, the table has {expected.passed}: {dict(result.reasons)}"
        )
    else:
        assert result.raised <= expected.raised, (
            f"{key}: {result.raised} of the first {SAMPLES_PER_OP} samples raise, the whole table "
            f"has {expected.raised}: {dict(result.reasons)}"
        )


def test_pass_rate_and_table():
    assert len(results) == len(OPS), "run the whole file: the per-op cases fill the results"
    total = opinfo_sweep.totals(results)
    outputs = os.environ.get("TEST_UNDECLARED_OUTPUTS_DIR")
    if outputs and SAMPLES_PER_OP is None:
        with open(os.path.join(outputs, "opinfo-sweep.md"), "w") as out:
            out.write(opinfo_sweep.format_table(results, PROVIDER))
    assert total["rate"] >= 0.95, f"pass rate {total['rate']:.4f} is below 95%: {dict(total)}"
    assert EXPECTED, f"{TABLE} is missing: run bazel run //tests:opinfo_sweep_update"
