// SPDX-License-Identifier: AGPL-3.0-or-later
#include "providers/common/child_process.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>

namespace mycelya {
namespace {

ChildSpec shell(const std::string& script) {
  ChildSpec spec;
  spec.argv = {"/bin/sh", "-c", script};
  return spec;
}

// Everything on `fd` until the child closes it.
std::string read_all(int fd) {
  std::string text;
  char buffer[256];
  for (ssize_t n; (n = read(fd, buffer, sizeof(buffer))) != 0;) {
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    text.append(buffer, static_cast<size_t>(n));
  }
  return text;
}

TEST(ChildProcess, PipesAllThreeStreamsAndReportsTheExitCode) {
  ChildSpec spec = shell("read line; echo \"got $line\"; echo oops >&2; exit 3");
  spec.pipe_stdin = spec.pipe_stdout = spec.pipe_stderr = true;
  ChildProcess child(spec);
  ASSERT_TRUE(child.write_stdin("hello\n"));
  child.close_stdin();
  EXPECT_EQ(read_all(child.stdout_fd()), "got hello\n");
  EXPECT_EQ(read_all(child.stderr_fd()), "oops\n");
  const int status = child.wait();
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 3);
  EXPECT_FALSE(child.running());
}

TEST(ChildProcess, GetsOnlyTheEnvironmentItIsGiven) {
  ChildSpec spec = shell("echo \"$GREETING/${HOME:-none}\"");
  spec.env = std::vector<std::string>{"GREETING=hi"};
  spec.pipe_stdout = true;
  ChildProcess child(spec);
  EXPECT_EQ(read_all(child.stdout_fd()), "hi/none\n");
  EXPECT_EQ(child.wait(), 0);
}

TEST(ChildProcess, WritesStderrToTheGivenFile) {
  char dir[] = "/tmp/child-process-test-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string log = std::string(dir) + "/log";
  {
    ChildSpec spec = shell("echo to-the-log >&2");
    spec.stderr_path = log;
    ChildProcess child(spec);
    EXPECT_EQ(child.wait(), 0);
  }
  std::ifstream file(log);
  std::stringstream text;
  text << file.rdbuf();
  EXPECT_EQ(text.str(), "to-the-log\n");
  unlink(log.c_str());
  rmdir(dir);
}

TEST(ChildProcess, SearchesPathOnlyWhenAsked) {
  ChildSpec spec;
  spec.argv = {"sh", "-c", "exit 5"};
  spec.search_path = true;
  ChildProcess found(spec);
  EXPECT_EQ(WEXITSTATUS(found.wait()), 5);

  // As a shell does: a program that cannot be executed exits with 127.
  spec.search_path = false;
  ChildProcess missing(spec);
  const int status = missing.wait();
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 127);
}

TEST(ChildProcess, WaitForGivesUpOnAChildThatRunsOn) {
  ChildProcess child(shell("exec sleep 30"));
  EXPECT_FALSE(child.wait_for(std::chrono::milliseconds(50)).has_value());
  EXPECT_TRUE(child.running());
}

TEST(ChildProcess, TerminateStopsAChildWithSigterm) {
  ChildSpec spec = shell("exec sleep 30");
  spec.stop_grace = std::chrono::seconds(20);
  ChildProcess child(spec);
  const auto start = std::chrono::steady_clock::now();
  child.terminate();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  const int status = child.wait();
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGTERM);
}

TEST(ChildProcess, TerminateKillsAChildThatIgnoresSigterm) {
  // exec keeps the ignored SIGTERM: sleep itself must be killed.
  ChildSpec spec = shell("trap '' TERM; echo ready; exec sleep 30");
  spec.pipe_stdout = true;
  spec.stop_grace = std::chrono::milliseconds(200);
  ChildProcess child(spec);
  // Only once the trap is set does SIGTERM meet a child that ignores it.
  char ready[6];
  ASSERT_EQ(read(child.stdout_fd(), ready, sizeof(ready)), 6);
  const auto start = std::chrono::steady_clock::now();
  child.terminate();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  EXPECT_FALSE(child.running());
  EXPECT_EQ(child.stdout_fd(), -1);
  const int status = child.wait();
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
}

}  // namespace
}  // namespace mycelya
