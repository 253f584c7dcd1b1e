# SPDX-License-Identifier: AGPL-3.0-or-later
"""Adds up the test cases in Bazel's test.xml files (pytest and GoogleTest both
write JUnit XML there) and prints one line: "tests: N passed, N failed, N skipped"."""

import glob
import os
import sys
import xml.etree.ElementTree as ElementTree


def main(testlogs):
    passed = failed = skipped = 0
    for path in glob.glob(os.path.join(testlogs, "**", "test.xml"), recursive=True):
        try:
            root = ElementTree.parse(path).getroot()
        except ElementTree.ParseError:
            failed += 1  # a test that died before writing its report
            continue
        for case in root.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed += 1
            elif case.find("skipped") is not None or case.get("status") == "notrun":
                skipped += 1
            else:
                passed += 1
    print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bazel-testlogs")
