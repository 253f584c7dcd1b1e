# SPDX-License-Identifier: AGPL-3.0-or-later
#
# Filters Bazel's output (tools/bazel_env.sh, bazel_quiet): on this kernel
# Bazel's linux-sandbox writes its debug log into every action's output,
# thousands of lines that hide what the build and the tests say. Drops those
# lines, and the "INFO: From <action>:" header of an action that printed
# nothing else. The sandbox itself is left as it is.
/^[0-9]+\.[0-9]+: src\/main\/tools\/(linux-sandbox|process-wrapper)/ { next }
/^INFO: From / { held = $0; next }
# Bazel's own lines (progress, messages, targets): the held action's output
# was only the log.
/^(\[[0-9,]+ \/ [0-9,]+\] |(INFO|WARNING|ERROR|DEBUG): |Target |Loading|Analyzing)/ { held = "" }
{
  if (held != "") { print held; held = "" }
  print
  fflush()
}
