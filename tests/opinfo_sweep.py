# SPDX-License-Identifier: AGPL-3.0-or-later
"""Runs PyTorch's OpInfo database on a mycelya device and on CPU, and compares.

For each OpInfo and each of its float32 sample inputs, one *sample* is checked:
the op itself, its in-place variant and its ``out=`` variant where the OpInfo
has them, and the gradients of its differentiable inputs. The first two samples
in each other dtype the OpInfo lists for CPU are checked too (the op itself). A
sample passes when every check that works on CPU gives the same result on
mycelya: the same values (``torch.testing.assert_close``) and the same strides
and storage offsets (as PyTorch's own fake-tensor tests compare them, below).
It *raised* when mycelya raised where CPU did not, it is *wrong* when mycelya
returned values that differ from CPU's, and *strides* when the values match
but the strides do not. Samples that fail on CPU, and values that differ
between two CPU runs (``empty``-like ops), are skipped with the reason.

Random ops (their CPU values follow the seed) run under one seed on both
sides. A device whose type is ``cpu`` draws PyTorch's CPU stream, so they
must give the CPU's values; a ``cuda`` device draws CUDA's stream, so there
they must be reproducible under one seed and drawn from the same
distribution as the CPU's (``same_distribution``).

The table this produces is ``docs/opinfo-sweep.md``; ``test_opinfo_sweep.py``
compares a fresh run against it, sample by sample. To rewrite the table after
a change (on the mock provider):

    bazel run //tests:opinfo_sweep_update
"""

import argparse
import collections
import contextlib
import dataclasses
import datetime
import functools
import itertools
import math
import os
import re
import statistics
import sys
import time
import warnings

import torch
from lazy_seeding import skip_seeding_absent_backends
from torch._prims_common import check_significant_strides
from torch.testing._internal.common_methods_invocations import op_db
from torch.testing._internal.opinfo.core import SampleInput
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

skip_seeding_absent_backends()

SWEEP_DTYPE = torch.float32
# Every other dtype an OpInfo lists for CPU: this many samples, forward only.
OTHER_DTYPE_SAMPLES = 2
SEED = 0
# Ops whose outputs are uninitialized memory: only shape, dtype and strides
# are compared (as for every OpInfo marked has_nondeterministic_output).
UNINITIALIZED_OPS = {
    "empty",
    "empty_like",
    "empty_permuted",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
}


# Ops whose accumulation dtype PyTorch picks by device type ("auto" policy):
# on half and bfloat16 a mycelya device and the CPU round differently by design.
DEVICE_POLICY_OPS = {"nn.functional.linear_cross_entropy"}

# Random ops on a cuda device: each test of same_distribution rejects at this
# significance. A sweep makes a few hundred such tests (four per output of
# each random sample), so the chance that one fails by bad luck stays below
# 1e-3. The critical values follow: the two-sided normal quantile, and the
# first term of the Kolmogorov distribution's tail, P(D > c) ~ 2 exp(-2 c^2).
DISTRIBUTION_ALPHA = 1e-6
_Z_CRITICAL = statistics.NormalDist().inv_cdf(1 - DISTRIBUTION_ALPHA / 2)
_KS_CRITICAL = math.sqrt(-0.5 * math.log(DISTRIBUTION_ALPHA / 2))
# Draws per output for the distribution tests: runs under seeds SEED, SEED+1,
# ... are pooled until each output has this many values (samples are small).
DISTRIBUTION_DRAWS = 2000
DISTRIBUTION_MAX_RUNS = 40


def _values_comparable(op):
    return op.name not in UNINITIALIZED_OPS and not op.has_nondeterministic_output


@dataclasses.dataclass(frozen=True)
class Target:
    """A mycelya device and the type of device it is on its machine ("cpu"
    or "cuda"), which decides how random ops compare."""

    device: torch.device
    type: str


def target_of(machine, device=None):
    """The Target for `device` (default: the machine's default device)."""
    device = machine.device() if device is None else torch.device(device)
    for name in machine.devices():
        kind, _, index = name.partition(":")
        if machine.device(kind, int(index or 0)) == device:
            return Target(device, kind)
    raise ValueError(f"{device} is not a device of {machine!r}; pass one of machine.device(...)")


@dataclasses.dataclass
class OpResult:
    passed: int = 0
    raised: int = 0
    wrong: int = 0
    strides: int = 0
    skipped: int = 0
    # Reason -> how many samples it covers, for raised, wrong, strides and skipped.
    reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # Sample id (sample_id) -> "raised", "wrong" or "strides", for every
    # sample that neither passed nor was skipped.
    failing: dict = dataclasses.field(default_factory=dict)

    @property
    def total(self):
        return self.passed + self.raised + self.wrong + self.strides + self.skipped


FAILING_OUTCOMES = ("raised", "wrong", "strides")


class Skip(Exception):
    """A check that cannot be compared (it fails on CPU, or CPU is not deterministic)."""


class Wrong(Exception):
    """mycelya returned values that differ from CPU's."""


class StridesDiffer(Exception):
    """mycelya returned CPU's values with other strides or storage offsets."""


def op_key(op):
    return op.name + ("." + op.variant_test_name if op.variant_test_name else "")


def sample_id(dtype, index):
    """How the table names a sample: its index among the op's float32
    samples, or "<dtype>:<index>" in another dtype."""
    return str(index) if dtype == SWEEP_DTYPE else f"{str(dtype).removeprefix('torch.')}:{index}"


def sweep_ops():
    """The OpInfos the sweep covers: every one that supports float32 on CPU."""
    return [op for op in op_db if SWEEP_DTYPE in op.supported_dtypes("cpu")]


def _short(exc):
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    # Storage IDs, addresses and sizes vary; keep reasons comparable across runs.
    text = re.sub(r"0x[0-9a-f]+", "0x…", text)
    return f"{type(exc).__name__}: {text[:160]}"


def _detached(sample):
    return sample.transform(lambda x: x.detach() if isinstance(x, torch.Tensor) else x)


def _clone_to(sample, device, move_cpu_tensors=False):
    """A SampleInput with fresh copies of its tensors (keeping requires_grad):
    those on a mycelya device go to `device`, and so does a `device=`
    argument (factory ops). CPU tensors in a sample made on a mycelya device
    are CPU on purpose (tensor_split's indices) and stay there, unless
    move_cpu_tensors."""

    def move(x):
        if not isinstance(x, torch.Tensor):
            return x
        stays = x.device.type == "cpu" and not move_cpu_tensors
        moved = x.detach().to(device="cpu" if stays else device, copy=True)
        if x.requires_grad:
            moved.requires_grad_(True)
        return moved

    kwargs = tree_map(move, sample.kwargs)
    if "device" in kwargs and torch.device(kwargs["device"]).type != "cpu":
        kwargs["device"] = device
    return SampleInput(
        tree_map(move, sample.input),
        args=tree_map(move, sample.args),
        kwargs=kwargs,
        output_process_fn_grad=sample.output_process_fn_grad,
        broadcasts_input=sample.broadcasts_input,
        name=sample.name,
    )


def _to_cpu(tree):
    return tree_map(lambda x: x.detach().cpu() if isinstance(x, torch.Tensor) else x, tree)


def _first_line(exc):
    return str(exc).strip().splitlines()[0][:160]


def _strides_differ(actual, expected):
    """Why `actual`'s layout differs from `expected`'s, or None. PyTorch's
    rule (compare_tensor_meta with check_strides, as its fake-tensor tests
    hold every op_db op to against the real kernel's output): strides of the
    dimensions longer than 1, of tensors with elements, and the storage offset."""
    if actual.layout != torch.strided or expected.layout != torch.strided:
        return None
    same, dim = check_significant_strides(actual, expected, only_cuda=False)
    if not same:
        strides = f"{tuple(actual.stride())} != {tuple(expected.stride())}"
        return f"stride {strides} (dim {dim}, shape {tuple(actual.shape)})"
    if actual.numel() > 0 and actual.storage_offset() != expected.storage_offset():
        return f"storage offset {actual.storage_offset()} != {expected.storage_offset()}"
    return None


def _compare(actual, expected, what, values=True):
    """Raises Wrong when `actual` (on the device, or moved to CPU) differs from
    `expected`: in values, or with values=False only in shape and dtype; then
    StridesDiffer when its strides differ. Strides are read before moving:
    a copy to CPU need not keep them."""
    moved = _to_cpu(actual)
    # Specs of moved trees: moving turns a torch.Size into a tuple, as in `expected`.
    moved_leaves, actual_spec = tree_flatten(moved)
    expected_leaves, expected_spec = tree_flatten(expected)
    if actual_spec != expected_spec:
        raise Wrong(f"{what}: output structure {actual_spec} != {expected_spec}")
    for i, (a, e) in enumerate(zip(moved_leaves, expected_leaves, strict=True)):
        try:
            if isinstance(e, torch.Tensor) and not values:
                if not isinstance(a, torch.Tensor):
                    raise AssertionError(f"{a!r} is not a tensor")
                if (a.shape, a.dtype) != (e.shape, e.dtype):
                    raise AssertionError(f"{a.shape}, {a.dtype} != {e.shape}, {e.dtype}")
            elif isinstance(e, torch.Tensor):
                torch.testing.assert_close(a, e, equal_nan=True)
            elif isinstance(e, float):
                torch.testing.assert_close(a, e, equal_nan=True)
            elif a != e:
                raise AssertionError(f"{a!r} != {e!r}")
        except AssertionError as exc:
            raise Wrong(f"{what}: output {i}: {_first_line(exc)}") from None
    for i, (a, e) in enumerate(zip(tree_flatten(actual)[0], expected_leaves, strict=True)):
        if isinstance(e, torch.Tensor) and isinstance(a, torch.Tensor):
            differs = _strides_differ(a, e)
            if differs:
                exc = StridesDiffer(f"{what}: output {i}: {differs}")
                exc.actual = actual
                raise exc


def _same_on_cpu(run):
    """Runs `run` twice on CPU under one seed; Skip when the two results differ."""
    torch.manual_seed(SEED)
    first = _to_cpu(run())
    torch.manual_seed(SEED)
    second = _to_cpu(run())
    try:
        _compare(second, first, "cpu")
    except Wrong:
        raise Skip("values differ between two CPU runs (uninitialized or random)") from None
    return first


def _cpu_or_skip(run):
    try:
        return _same_on_cpu(run)
    except Skip:
        raise
    except Exception as exc:  # noqa: BLE001 -- any CPU failure means "not comparable"
        raise Skip(f"fails on CPU: {_short(exc)[:90]}") from None


def _on_device(run, device, seed=SEED):
    torch.manual_seed(seed)
    result = run()
    torch.mycelya.synchronize(device)
    return result


class _SeededOps(TorchDispatchMode):
    """Notes whether an op PyTorch tags nondeterministic_seeded (it draws from a generator) runs."""

    seen = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen = self.seen or torch.Tag.nondeterministic_seeded in func.tags
        return func(*args, **(kwargs or {}))


def _is_random(run, expected):
    """Whether `run` is a random op: on CPU it draws from a generator, or gives
    other values under another seed. (Both: OpInfo's wrapper_set_seed seeds
    itself, so its values never follow the caller's seed.)"""
    torch.manual_seed(SEED + 1)
    with _SeededOps() as seeded:
        again = _to_cpu(run("cpu"))
    if seeded.seen:
        return True
    try:
        _compare(again, expected, "cpu")
    except Wrong:
        return True
    except StridesDiffer:
        pass
    return False


def _ks_statistic(a, b):
    """The two-sample Kolmogorov-Smirnov statistic: the largest distance
    between the empirical CDFs of `a` and `b` (1-D float64), ties included."""
    a, b = a.sort().values, b.sort().values
    points = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, points, right=True).double() / a.numel()
    cdf_b = torch.searchsorted(b, points, right=True).double() / b.numel()
    return (cdf_a - cdf_b).abs().max().item()


def _z_rejects(difference, variance):
    """Whether `difference` is significant given its variance under the null."""
    if variance <= 0:
        return difference != 0
    return abs(difference) / math.sqrt(variance) > _Z_CRITICAL


def _distribution_mismatch(a, b):
    """Why samples `a` and `b` (1-D float64) do not look drawn from one
    distribution, or None: a test of the means, one of the variances (each a
    z-test with variances estimated from the samples, which needs no shape of
    distribution), and the Kolmogorov-Smirnov test, each at DISTRIBUTION_ALPHA."""
    finite_a, finite_b = a.isfinite(), b.isfinite()
    fa, fb = finite_a.double().mean().item(), finite_b.double().mean().item()
    if _z_rejects(fa - fb, fa * (1 - fa) / a.numel() + fb * (1 - fb) / b.numel()):
        return f"finite fraction {fa:.4g} vs {fb:.4g}"
    a, b = a[finite_a], b[finite_b]
    if a.numel() < 2 or b.numel() < 2:
        return None
    mean_a, mean_b = a.mean().item(), b.mean().item()
    var_a, var_b = a.var(correction=0).item(), b.var(correction=0).item()
    if _z_rejects(mean_a - mean_b, var_a / a.numel() + var_b / b.numel()):
        return f"mean {mean_a:.6g} vs {mean_b:.6g}"
    # Var(sample variance) ~ (m4 - var^2) / n, with m4 the fourth central moment.
    m4_a, m4_b = ((a - mean_a) ** 4).mean().item(), ((b - mean_b) ** 4).mean().item()
    spread = (m4_a - var_a**2) / a.numel() + (m4_b - var_b**2) / b.numel()
    if _z_rejects(var_a - var_b, spread):
        return f"variance {var_a:.6g} vs {var_b:.6g}"
    statistic = _ks_statistic(a, b)
    critical = _KS_CRITICAL * math.sqrt((a.numel() + b.numel()) / (a.numel() * b.numel()))
    if statistic > critical:
        return f"Kolmogorov-Smirnov distance {statistic:.4f} > {critical:.4f}"
    return None


def same_distribution(actual_runs, expected_runs, what):
    """Raises Wrong unless each tensor output of `actual_runs` (results of
    several runs, trees of CPU tensors) looks drawn from the same distribution
    as the same output of `expected_runs`; see _distribution_mismatch."""
    actual = [tree_flatten(run)[0] for run in actual_runs]
    expected = [tree_flatten(run)[0] for run in expected_runs]
    for i, leaf in enumerate(expected[0]):
        if not isinstance(leaf, torch.Tensor) or leaf.is_complex():
            continue
        a = torch.cat([run[i].detach().reshape(-1).double() for run in actual])
        b = torch.cat([run[i].detach().reshape(-1).double() for run in expected])
        mismatch = _distribution_mismatch(a, b)
        if mismatch:
            raise Wrong(
                f"{what} (random, by distribution): output {i}: {mismatch} over "
                f"{a.numel()} and {b.numel()} values (significance {DISTRIBUTION_ALPHA})"
            )


def _distribution_runs(expected):
    """How many seeds to pool so that the smallest output has DISTRIBUTION_DRAWS values."""
    sizes = [x.numel() for x in tree_flatten(expected)[0] if isinstance(x, torch.Tensor) and x.numel() > 0]
    if not sizes:
        return 1
    return max(1, min(DISTRIBUTION_MAX_RUNS, math.ceil(DISTRIBUTION_DRAWS / min(sizes))))


def _compare_random_by_distribution(run, target, actual, expected, what):
    """A random op on a device whose stream is not the CPU's: reproducible
    under one seed, CPU's shapes, dtypes and strides, and CPU's distribution."""
    again = _on_device(lambda: run(target.device), target.device)
    # Both moved alike: this compares values; strides are compared with CPU's next.
    _compare(_to_cpu(again), _to_cpu(actual), f"{what} (random, same seed twice)")
    _compare(actual, expected, f"{what} (random)", values=False)
    seeds = range(SEED, SEED + _distribution_runs(expected))
    expected_runs = []
    for seed in seeds:
        torch.manual_seed(seed)
        expected_runs.append(_to_cpu(run("cpu")))
    if len(seeds) > 1 and _same_values(expected_runs[1], expected_runs[0]):
        # The op seeds itself (wrapper_set_seed): more seeds give no new draws.
        seeds, expected_runs = seeds[:1], expected_runs[:1]
    actual_runs = [_to_cpu(_on_device(lambda: run(target.device), target.device, seed)) for seed in seeds]
    same_distribution(actual_runs, expected_runs, what)


def _same_values(actual, expected):
    try:
        _compare(actual, expected, "cpu")
    except (Wrong, StridesDiffer):
        return False
    return True


def _meta_layout(run, actual):
    """Whether the tensors of `actual` have the strides PyTorch's meta kernels
    give run("meta")'s: mycelya plans every output with them, and they lay
    outputs out as CUDA's kernels do (``device_hint`` is "cuda" on meta), where
    some CPU kernels pick another layout (LAPACK's column-major factors,
    pocketfft's, channels-last max_unpool, nonzero)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            planned = tree_flatten(run("meta"))[0]
    except Exception:  # noqa: BLE001 -- no meta answer: not that layout
        return False
    actual = tree_flatten(actual)[0]
    return len(planned) == len(actual) and all(
        _strides_differ(a, m) is None
        for a, m in zip(actual, planned, strict=True)
        if isinstance(a, torch.Tensor) and isinstance(m, torch.Tensor)
    )


def compare_with_cpu(run, target, what, values=True):
    """Compares run(target.device) with run("cpu"). A random op (its CPU
    values follow the seed) must give the CPU's values on a cpu device, whose
    stream is PyTorch's CPU one; elsewhere see _compare_random_by_distribution.
    Other strides than CPU's say whether they are the meta kernel's layout."""
    try:
        _compare_with_cpu(run, target, what, values)
    except StridesDiffer as exc:
        layout = (
            "the meta kernel's (CUDA's) layout"
            if _meta_layout(run, exc.actual)
            else "not meta's layout either"
        )
        raise StridesDiffer(f"{exc}: {layout}") from None


def _compare_with_cpu(run, target, what, values):
    if not values:
        _compare(_on_device(lambda: run(target.device), target.device), _to_cpu(run("cpu")), what, False)
        return
    expected = _cpu_or_skip(lambda: run("cpu"))
    if expected is None:
        return
    actual = _on_device(lambda: run(target.device), target.device)
    try:
        _compare(actual, expected, what)
    except Wrong as exc:
        if not _is_random(run, expected):
            raise
        if target.type == "cpu":
            raise Wrong(f"{exc} (random: a cpu device draws the CPU's numbers under one seed)") from None
        _compare_random_by_distribution(run, target, actual, expected, what)


def _call(fn, sample, **extra):
    return fn(sample.input, *sample.args, **sample.kwargs, **extra)


def _check_forward(op, sample, target):
    compare_with_cpu(
        lambda device: _call(op, _clone_to(sample, device)), target, "forward", _values_comparable(op)
    )


def _check_inplace(op, sample, target):
    def run(device):
        # In-place ops on leaves that require grad are not allowed; compare values only.
        cloned = _detached(_clone_to(sample, device))
        _call(op.inplace_variant, cloned)
        return cloned.input

    compare_with_cpu(run, target, "in-place")


def _check_out(op, sample, target):
    def run(device):
        with torch.no_grad():
            reference = _call(op, _clone_to(sample, "cpu"))
        # Filled, not empty: where a kernel leaves part of `out` unwritten (CPU's
        # ihfftn can), both sides then show the same fill instead of garbage.
        outs = tree_map(
            lambda x: torch.full_like(x, 1, device=device) if isinstance(x, torch.Tensor) else x, reference
        )
        cloned = _detached(_clone_to(sample, device))
        _call(op, cloned, out=outs)
        return outs

    compare_with_cpu(run, target, "out=", _values_comparable(op))


def _grad_inputs(tree):
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor) and x.requires_grad]


def _check_grad(op, sample, target):
    def run(device):
        cloned = _clone_to(sample, device)
        inputs = _grad_inputs([cloned.input, cloned.args, cloned.kwargs])
        outputs = sample.output_process_fn_grad(_call(op, cloned))
        outputs = [
            x
            for x in tree_flatten(outputs)[0]
            if isinstance(x, torch.Tensor) and x.requires_grad and (x.is_floating_point() or x.is_complex())
        ]
        if not inputs or not outputs:
            return None
        # Cotangents made on CPU from a fixed seed, so both runs use the same ones.
        generator = torch.Generator().manual_seed(SEED)
        cotangents = [torch.randn(x.shape, dtype=x.dtype, generator=generator).to(x.device) for x in outputs]
        return torch.autograd.grad(outputs, inputs, cotangents, allow_unused=True)

    compare_with_cpu(run, target, "gradient")


def check_sample(op, sample, target):
    """Runs every applicable check of one sample. Raises Skip, Wrong,
    StridesDiffer (after the other checks ran: their errors come first), or
    what mycelya raised.

    Attention on a machine's cpu device picks the backend CPU picks, so the
    CPU reference runs as it is."""
    layouts = []

    def check(fn):
        try:
            fn(op, sample, target)
        except StridesDiffer as exc:
            layouts.append(exc)

    check(_check_forward)
    if op.inplace_variant is not None:
        with contextlib.suppress(Skip):
            check(_check_inplace)
    if op.supports_out:
        with contextlib.suppress(Skip):
            check(_check_out)
    if op.supports_autograd:
        with contextlib.suppress(Skip):
            check(_check_grad)
    if layouts:
        raise layouts[0]


def _samples(op, device, dtype=SWEEP_DTYPE, requires_grad=None, limit=None):
    """The op's first `limit` samples (all by default), made on the mycelya
    device as PyTorch's own device tests make them; made on CPU and moved
    when that fails."""
    if requires_grad is None:
        requires_grad = op.supports_autograd
    try:
        torch.manual_seed(SEED)
        return list(itertools.islice(op.sample_inputs(device, dtype, requires_grad=requires_grad), limit))
    except Exception:  # noqa: BLE001 -- a generator that needs what mycelya lacks
        torch.manual_seed(SEED)
        samples = itertools.islice(op.sample_inputs("cpu", dtype, requires_grad=requires_grad), limit)
        return [_clone_to(sample, device, move_cpu_tensors=True) for sample in samples]


def record(result, check, sample, prefix=""):
    """Runs `check` and counts its outcome in `result` (`sample`: its sample_id)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check()
        result.passed += 1
        return
    except Skip as exc:
        result.skipped += 1
        result.reasons[f"skipped{prefix}: {exc}"] += 1
        return
    except Wrong as exc:
        outcome, reason = "wrong", str(exc)
    except StridesDiffer as exc:
        outcome, reason = "strides", str(exc)
    except Exception as exc:  # noqa: BLE001 -- recorded as raised, with its message
        outcome, reason = "raised", _short(exc)
    setattr(result, outcome, getattr(result, outcome) + 1)
    result.reasons[f"{outcome}{prefix}: {reason}"] += 1
    result.failing[sample] = outcome


@dataclasses.dataclass(frozen=True)
class Rotation:
    """Which samples a partial sweep runs: of each op's samples in order
    (float32 first, then the other dtypes'), those at positions p with
    p % stride == index; an op with too few samples for that runs the one at
    index % count, so that every run covers every op. Runs with index 0, 1,
    ..., stride - 1 together cover every sample once."""

    index: int
    stride: int

    def positions(self, count):
        chosen = set(range(self.index % self.stride, count, self.stride))
        return chosen or ({self.index % count} if count else set())

    @classmethod
    def of_the_day(cls, stride, day=None):
        """Index = days since 1970-01-01 (UTC) modulo stride: one rotation a
        day, so a CI day's runs agree and `stride` days cover every sample."""
        day = datetime.datetime.now(datetime.UTC).date() if day is None else day
        return cls((day - datetime.date(1970, 1, 1)).days % stride, stride)

    def __str__(self):
        return f"rotation {self.index} of {self.stride} (MYCELYA_SWEEP_ROTATION={self.index} repeats it)"


def _other_dtype_checks(op, target, result):
    """(sample_id, prefix, check) for the forward of the first
    OTHER_DTYPE_SAMPLES samples in every other dtype the OpInfo lists for CPU."""
    checks = []
    for dtype in sorted(op.supported_dtypes("cpu") - {SWEEP_DTYPE}, key=str):
        prefix = f" ({str(dtype).removeprefix('torch.')})"
        if op.name in DEVICE_POLICY_OPS and dtype in (torch.float16, torch.bfloat16):
            result.skipped += 1
            result.reasons[f"skipped{prefix}: accumulation dtype chosen by device type"] += 1
            continue
        try:
            samples = _samples(op, target.device, dtype, requires_grad=False, limit=OTHER_DTYPE_SAMPLES)
        except Exception as exc:  # noqa: BLE001 -- a broken sample generator skips the dtype
            result.skipped += 1
            result.reasons[f"skipped{prefix}: sample inputs fail: {type(exc).__name__}"] += 1
            continue
        for i, sample in enumerate(samples):
            checks.append(
                (sample_id(dtype, i), prefix, functools.partial(_check_forward, op, sample, target))
            )
    return checks


def sweep_op(op, target, rotation=None):
    """Every float32 sample of `op` and the first samples in its other
    dtypes; with a Rotation, only the samples it picks."""
    result = OpResult()
    try:
        samples = _samples(op, target.device)
    except Exception as exc:  # noqa: BLE001 -- a broken sample generator skips the op
        result.skipped += 1
        result.reasons[f"sample inputs fail: {type(exc).__name__}"] += 1
        return result
    checks = [
        (sample_id(SWEEP_DTYPE, i), "", functools.partial(check_sample, op, sample, target))
        for i, sample in enumerate(samples)
    ]
    checks += _other_dtype_checks(op, target, result)
    chosen = rotation.positions(len(checks)) if rotation else range(len(checks))
    for position in sorted(chosen):
        sample, prefix, check = checks[position]
        record(result, check, sample, prefix)
    return result


def unexpected_outcomes(result, expected):
    """Samples of `result` that did not pass and whose outcome the table
    (`expected`, None for an op not in it) does not record for them."""
    recorded = expected.failing if expected is not None else {}
    return {sample: outcome for sample, outcome in result.failing.items() if recorded.get(sample) != outcome}


# The table: one row per OpInfo, parsed back for the regression check.
_COLUMNS = ("op", "samples", "passed", "raised", "wrong", "strides", "skipped", "failing samples", "reasons")


def _format_samples(failing):
    """'raised: 0-3 7; strides: float64:1' from {sample_id: outcome}."""
    parts = []
    for outcome in FAILING_OUTCOMES:
        ids = [sample for sample, got in failing.items() if got == outcome]
        numbers = sorted(int(sample) for sample in ids if sample.isdigit())
        words = []
        for _, run in itertools.groupby(enumerate(numbers), lambda pair: pair[1] - pair[0]):
            run = [number for _, number in run]
            words.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        words += sorted(sample for sample in ids if not sample.isdigit())
        if words:
            parts.append(f"{outcome}: {' '.join(words)}")
    return "; ".join(parts)


def _parse_samples(text):
    failing = {}
    for part in filter(None, (part.strip() for part in text.split(";"))):
        outcome, _, words = part.partition(":")
        for word in words.split():
            first, dash, last = word.partition("-")
            if dash and first.isdigit():
                failing.update({str(n): outcome.strip() for n in range(int(first), int(last) + 1)})
            else:
                failing[word] = outcome.strip()
    return failing


def totals(results):
    counts = collections.Counter()
    for result in results.values():
        counts.update(
            passed=result.passed,
            raised=result.raised,
            wrong=result.wrong,
            strides=result.strides,
            skipped=result.skipped,
        )
    compared = counts["passed"] + counts["raised"] + counts["wrong"] + counts["strides"]
    counts["rate"] = counts["passed"] / compared if compared else 1.0
    return counts


def format_table(results, provider):
    return format_results(
        results,
        "OpInfo sweep",
        [
            "Every OpInfo in PyTorch's `op_db` that supports float32 on CPU, run on a mycelya",
            f"device (`{provider}` provider) and on CPU; see `tests/opinfo_sweep.py` for what a",
            "sample checks (forward, in-place, `out=`, gradients: values, strides and storage",
            "offsets). Rewritten by `bazel run //tests:opinfo_sweep_update`; `//tests:opinfo_sweep`",
            "(mock, every sample) and `//tests:opinfo_sweep_local_cuda` (a rotation of the samples)",
            "fail when a sample raises, is wrong or has other strides where this table does not",
            "say so (*failing samples*: float32 sample indices, `dtype:index` for other dtypes).",
        ],
        "ops",
    )


def format_results(results, title, description, rows_are, first_column="op"):
    """A results table: `title`, the `description` lines, the totals (`rows_are`
    names the rows in them), then one row per key of `results`."""
    total = totals(results)
    samples = sum(r.total for r in results.values())
    columns = (first_column, *_COLUMNS[1:])
    lines = [
        f"# {title}",
        "",
        *description,
        "",
        f"**{len(results)} {rows_are}, {samples} samples: {total['passed']} passed, "
        f"{total['raised']} raised, {total['wrong']} wrong, {total['strides']} with other strides, "
        f"{total['skipped']} skipped. "
        f"Pass rate of the samples that run on CPU: {100 * total['rate']:.2f}%.**",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for key in sorted(results):
        r = results[key]
        reasons = "; ".join(f"{n}x {text}" for text, n in r.reasons.most_common())
        reasons = reasons.replace("|", "/").replace("\n", " ")
        lines.append(
            f"| {key} | {r.total} | {r.passed} | {r.raised} | {r.wrong} | {r.strides} | {r.skipped} "
            f"| {_format_samples(r.failing)} | {reasons} |"
        )
    return "\n".join(lines) + "\n"


def parse_table(text):
    """op -> OpResult (counts and failing samples; no reasons) from a table format_table wrote."""
    results = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < len(_COLUMNS) - 1 or not cells[1].isdigit():
            continue
        results[cells[0]] = OpResult(*(int(cell) for cell in cells[2:7]), failing=_parse_samples(cells[7]))
    return results


def run_sweep(target, progress=None):
    results = {}
    ops = sweep_ops()
    start = time.monotonic()
    for i, op in enumerate(ops):
        results[op_key(op)] = sweep_op(op, target)
        if progress and (i + 1) % 50 == 0:
            progress(f"{i + 1}/{len(ops)} ops, {time.monotonic() - start:.0f} s")
    return results


TABLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs")


def expected_table(name):
    """The committed table docs/<name>, parsed ({} when it is missing)."""
    path = os.path.join(TABLES, name)
    return parse_table(open(path).read()) if os.path.exists(path) else {}


def rotation_from_environment():
    """The Rotation MYCELYA_SWEEP_STRIDE (and MYCELYA_SWEEP_ROTATION) ask
    for: today's when no index is given; None (every sample) without a stride."""
    if not os.environ.get("MYCELYA_SWEEP_STRIDE"):
        return None
    stride = int(os.environ["MYCELYA_SWEEP_STRIDE"])
    if os.environ.get("MYCELYA_SWEEP_ROTATION"):
        return Rotation(int(os.environ["MYCELYA_SWEEP_ROTATION"]), stride)
    return Rotation.of_the_day(stride)


def update_table(description, table_name, sweep, write):
    """A sweep's update command: runs sweep(target, progress) on a machine
    of --provider and writes write(results, provider) to docs/<table_name>."""
    import mycelya_torch

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--provider", default="mock")
    default_out = os.path.join(os.environ.get("BUILD_WORKSPACE_DIRECTORY", "."), "docs", table_name)
    parser.add_argument("--out", default=default_out)
    args = parser.parse_args()
    with mycelya_torch.RemoteMachine(args.provider) as machine:
        results = sweep(target_of(machine), functools.partial(print, file=sys.stderr, flush=True))
    with open(args.out, "w") as out:
        out.write(write(results, args.provider))
    total = totals(results)
    print(
        f"wrote {args.out}: {total['passed']} passed, {total['raised']} raised, {total['wrong']} wrong, "
        f"{total['strides']} with other strides"
    )


def main():
    update_table(__doc__.splitlines()[0], "opinfo-sweep.md", run_sweep, format_table)


if __name__ == "__main__":
    main()
