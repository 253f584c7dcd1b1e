// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The lifecycle table of core/machine_phase.h: the moves it lists, and the
// questions the machine asks of a phase, agree with one another.
#include "core/machine_phase.h"

#include <gtest/gtest.h>

#include <vector>

namespace mycelya {
namespace {

using P = MachinePhase;

const std::vector<P>& all_phases() {
  static const std::vector<P> phases = {P::kStopped,  P::kRunning, P::kPausing, P::kResuming,
                                        P::kStopping, P::kLost,    P::kPaused};
  return phases;
}

TEST(MachinePhaseTest, TheTableListsExactlyTheseMoves) {
  const std::vector<std::pair<P, P>> listed = {
      {P::kStopped, P::kRunning},  {P::kRunning, P::kPausing},  {P::kPausing, P::kRunning},
      {P::kPaused, P::kResuming},  {P::kResuming, P::kRunning}, {P::kRunning, P::kLost},
      {P::kPausing, P::kLost},     {P::kResuming, P::kLost},    {P::kStopping, P::kLost},
      {P::kRunning, P::kStopping}, {P::kPausing, P::kStopping}, {P::kResuming, P::kStopping},
      {P::kStopping, P::kStopped}, {P::kLost, P::kStopped},     {P::kStopping, P::kPaused},
      {P::kLost, P::kPaused},      {P::kPaused, P::kStopped},
  };
  for (const P from : all_phases()) {
    for (const P to : all_phases()) {
      bool expected = false;
      for (const auto& move : listed) expected |= move.first == from && move.second == to;
      EXPECT_EQ(phase_move_allowed(from, to), expected)
          << phase_name(from) << " -> " << phase_name(to);
    }
  }
}

TEST(MachinePhaseTest, APausedMachineRunsAgainOnlyThroughAResume) {
  EXPECT_FALSE(phase_move_allowed(P::kPaused, P::kRunning));
  EXPECT_TRUE(phase_move_allowed(P::kPaused, P::kResuming));
}

TEST(MachinePhaseTest, TheQuestionsAgree) {
  for (const P phase : all_phases()) {
    SCOPED_TRACE(phase_name(phase));
    // Commands go only to an attached session.
    EXPECT_TRUE(!takes_commands(phase) || has_session(phase));
    // A pause or resume under way holds other threads, but its own requests go through.
    EXPECT_TRUE(!holds_other_threads(phase) || takes_commands(phase));
    // The sender ends only where it has a session to end with, and never while commands are taken.
    if (sender_ends(phase)) {
      EXPECT_TRUE(has_session(phase));
      EXPECT_FALSE(takes_commands(phase));
    }
  }
  EXPECT_FALSE(has_session(P::kStopped));
  EXPECT_FALSE(has_session(P::kPaused));
  EXPECT_TRUE(takes_commands(P::kRunning));
  EXPECT_FALSE(takes_commands(P::kLost));
}

}  // namespace
}  // namespace mycelya
