# SPDX-License-Identifier: AGPL-3.0-or-later
"""Runs pytest on the test files named in argv (paths relative to this folder).

Bazel's py_test runs this as the main program; pytest's exit code is the test's.
"""

import os
import sys

import pytest

# Everything a test writes stays in its own temporary folder (Bazel's
# TEST_TMPDIR, which is also HOME there): pytest's tmp_path, the state of
# paused machines, pip's and HuggingFace's caches. Child processes (servers,
# fakes) inherit these.
if os.environ.get("TEST_TMPDIR"):
    scratch = os.environ["TEST_TMPDIR"]
    for name, folder in (
        ("TMPDIR", "tmp"),
        ("MYCELYA_HOME", "mycelya-home"),
        ("HF_HOME", "huggingface"),
        ("PIP_CACHE_DIR", "pip-cache"),
    ):
        os.environ[name] = os.path.join(scratch, folder)
        os.makedirs(os.environ[name], exist_ok=True)

here = os.path.dirname(os.path.abspath(__file__))
files = [os.path.join(here, name) for name in sys.argv[1:]]
args = ["-q", "-p", "no:cacheprovider", "-rs", *files]
# Under Bazel, per-test-case results go where Bazel collects them (test.xml).
if os.environ.get("XML_OUTPUT_FILE"):
    args.append("--junitxml=" + os.environ["XML_OUTPUT_FILE"])
sys.exit(pytest.main(args))
