# SPDX-License-Identifier: AGPL-3.0-or-later
"""The OpInfo sweep (tests/opinfo_sweep.py) against the committed table.

Each op is one test case: it fails when mycelya returns values that differ
from CPU's, or when a sample raises or has other strides than CPU's where
docs/opinfo-sweep.md does not record that outcome for that sample (an op the
table lacks must pass every sample), or when the op passes fewer samples than
the table records. The last case checks the 95% bar and leaves this run's
table in Bazel's undeclared outputs (bazel-testlogs/.../test.outputs).

MYCELYA_SWEEP_STRIDE=N sweeps one sample in N of each op (at least one per
op; opinfo_sweep.Rotation): what a provider whose ops take the same client and
executor path as mock's, over another transport, needs in the time it has.
The rotation changes daily, so N days cover every sample;
MYCELYA_SWEEP_ROTATION=i repeats rotation i. It is printed, and named in
every failure.
"""

import math
import os
import sys

import opinfo_sweep
import pytest
import torch

from conftest import PROVIDER

TABLE = "docs/opinfo-sweep.md"
EXPECTED = opinfo_sweep.expected_table("opinfo-sweep.md")
OPS = opinfo_sweep.sweep_ops()
ROTATION = opinfo_sweep.rotation_from_environment()
SCOPE = f" [{ROTATION}]" if ROTATION else ""
results = {}


@pytest.fixture(scope="module")
def target(machine, device):
    return opinfo_sweep.target_of(machine, device)


def test_rotations_cover_every_sample_and_op(capsys):
    with capsys.disabled():
        print(f"\nOpInfo sweep: {ROTATION or 'every sample'}", file=sys.stderr, flush=True)
    for stride in (1, 7, 10):
        for count in range(0, 40):
            chosen = [opinfo_sweep.Rotation(index, stride).positions(count) for index in range(stride)]
            assert set().union(*chosen) == set(range(count)), (stride, count)
            assert all(positions for positions in chosen) or count == 0, (stride, count)


def _draws(kind, n, seed):
    generator = torch.Generator().manual_seed(seed)
    normal = torch.randn(n, generator=generator, dtype=torch.float64)
    uniform = torch.rand(n, generator=generator, dtype=torch.float64)
    return {
        "normal": normal,
        "shifted": normal + 0.5,
        "wider": normal * 1.5,
        # The normal's mean and variance: only the shape tells them apart.
        "uniform": (uniform - 0.5) * math.sqrt(12),
        "constant": torch.zeros(n, dtype=torch.float64),
        "bernoulli": (uniform < 0.3).double(),
        "cauchy": torch.empty(n, dtype=torch.float64).cauchy_(generator=generator),
        "some inf": torch.where(uniform < 0.1, math.inf, normal),
    }[kind]


@pytest.mark.parametrize("kind", ["normal", "uniform", "bernoulli", "cauchy", "some inf"])
def test_same_distribution_accepts_two_draws_of_one(kind):
    opinfo_sweep.same_distribution([_draws(kind, 20000, 1)], [_draws(kind, 20000, 2)], "forward")


@pytest.mark.parametrize(
    "kind, test",
    [
        ("constant", "variance"),
        ("shifted", "mean"),
        ("wider", "variance"),
        ("uniform", "Kolmogorov-Smirnov"),
        ("some inf", "finite fraction"),
    ],
)
def test_same_distribution_rejects_another_one(kind, test):
    # Each case differs from the normal in what only `test` sees first.
    with pytest.raises(opinfo_sweep.Wrong, match=rf"by distribution\): output 0: {test}"):
        opinfo_sweep.same_distribution([_draws(kind, 20000, 1)], [_draws("normal", 20000, 2)], "forward")


def test_ks_statistic_is_scipys():
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(3)
    # Rounded: ties within and across the samples.
    a = (torch.randn(300, generator=generator, dtype=torch.float64) * 4).round()
    b = (torch.randn(200, generator=generator, dtype=torch.float64) * 4 + 0.5).round()
    expected = stats.ks_2samp(a.numpy(), b.numpy()).statistic
    assert opinfo_sweep._ks_statistic(a, b) == pytest.approx(expected, abs=1e-12)


def _other_stream(device):
    """torch.rand under the current seed, one draw into the stream on the
    mycelya device: the CPU's distribution, not its numbers (as on a GPU)."""
    if device != "cpu":
        torch.rand(1, device=device)
    return torch.rand(500, device=device)


def _constant_on_the_device(device):
    return torch.rand(500) if device == "cpu" else torch.full((500,), 0.5, device=device)


def test_random_ops_compare_by_distribution_on_a_cuda_device(device):
    # No GPU here: the mock's cpu device stands in for a cuda one, whose stream is not the CPU's.
    cuda = opinfo_sweep.Target(device, "cuda")
    opinfo_sweep.compare_with_cpu(_other_stream, cuda, "forward")
    with pytest.raises(opinfo_sweep.Wrong, match=r"by distribution\): output 0: variance"):
        opinfo_sweep.compare_with_cpu(_constant_on_the_device, cuda, "forward")


def test_random_ops_give_the_cpus_numbers_on_a_cpu_device(machine, device):
    cpu = opinfo_sweep.target_of(machine, device)
    assert cpu.type == "cpu"
    opinfo_sweep.compare_with_cpu(lambda target: torch.rand(500, device=target), cpu, "forward")
    with pytest.raises(opinfo_sweep.Wrong, match="cpu device draws the CPU's numbers"):
        opinfo_sweep.compare_with_cpu(_other_stream, cpu, "forward")


def test_strides_are_compared(machine, device):
    cpu = opinfo_sweep.target_of(machine, device)

    def transposed_on_the_device(target):
        x = torch.arange(12.0, device=target).reshape(3, 4)
        return x.t().contiguous().t() if torch.device(target).type == "mycelya" else x

    with pytest.raises(
        opinfo_sweep.StridesDiffer, match=r"^forward: output 0: stride \(1, 3\) != \(4, 1\)"
    ) as raised:
        opinfo_sweep.compare_with_cpu(transposed_on_the_device, cpu, "forward")
    assert str(raised.value).endswith("not meta's layout either")
    # Where meta lays the output out as the device did, the reason says so.
    with pytest.raises(opinfo_sweep.StridesDiffer, match="the meta kernel's"):
        opinfo_sweep.compare_with_cpu(
            lambda target: torch.nonzero_static(torch.ones(3, 3, device=target), size=5), cpu, "forward"
        )


def test_failing_samples_round_trip_through_the_table():
    result = opinfo_sweep.OpResult(passed=3, raised=3, strides=2)
    result.failing = {"0": "raised", "1": "raised", "2": "raised", "5": "strides", "float64:1": "strides"}
    result.reasons["raised: RuntimeError: x"] = 3
    parsed = opinfo_sweep.parse_table(opinfo_sweep.format_table({"op": result}, "mock"))["op"]
    assert (parsed.passed, parsed.raised, parsed.strides, parsed.failing) == (3, 3, 2, result.failing)
    assert "raised: 0-2; strides: 5 float64:1" in opinfo_sweep.format_table({"op": result}, "mock")


@pytest.mark.parametrize("op", OPS, ids=[opinfo_sweep.op_key(op) for op in OPS])
def test_op_matches_cpu(op, target):
    key = opinfo_sweep.op_key(op)
    result = results[key] = opinfo_sweep.sweep_op(op, target, ROTATION)
    wrong = [text for text in result.reasons if text.startswith("wrong")]
    assert result.wrong == 0, f"{key}{SCOPE}: mycelya returned values that differ from CPU: {wrong}"
    expected = EXPECTED.get(key)
    unexpected = opinfo_sweep.unexpected_outcomes(result, expected)
    recorded = expected.failing if expected else "no row: bazel run //tests:opinfo_sweep_update adds the op"
    assert not unexpected, (
        f"{key}{SCOPE}: samples {unexpected} did not pass; the table records {recorded}; "
        f"reasons: {dict(result.reasons)}"
    )
    if ROTATION is None and expected is not None:
        assert result.passed >= expected.passed, (
            f"{key}: {result.passed} samples pass, the table has {expected.passed}: {dict(result.reasons)}"
        )


def test_pass_rate_and_table():
    assert len(results) == len(OPS), "run the whole file: the per-op cases fill the results"
    total = opinfo_sweep.totals(results)
    outputs = os.environ.get("TEST_UNDECLARED_OUTPUTS_DIR")
    if outputs and ROTATION is None:
        with open(os.path.join(outputs, "opinfo-sweep.md"), "w") as out:
            out.write(opinfo_sweep.format_table(results, PROVIDER))
    assert total["rate"] >= 0.95, f"pass rate {total['rate']:.4f} is below 95%{SCOPE}: {dict(total)}"
    assert EXPECTED, f"{TABLE} is missing or has no rows: run bazel run //tests:opinfo_sweep_update"
