// SPDX-License-Identifier: AGPL-3.0-or-later
//
// CommandQueue on its own, without threads or a session: what a batch holds,
// how names are interned, and what the queue remembers for early reads.
#include "core/command_queue.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "proto/mycelya.pb.h"
#include "proto/tensor_geometry.h"

namespace mycelya {
namespace {

wire::Command op(const std::string& name, uint64_t input, uint64_t output) {
  wire::Command command;
  command.mutable_op()->set_op_name(name);
  *command.mutable_op()->add_args()->mutable_tensor() = contiguous_ref(input, {2});
  *command.mutable_op()->add_outputs() = contiguous_ref(output, {2});
  return command;
}

wire::Command upload(uint64_t target) {
  wire::Command command;
  *command.mutable_upload()->mutable_target() = contiguous_ref(target, {1});
  return command;
}

wire::Batch parse(const EncodedBatch& encoded) {
  wire::Batch batch;
  EXPECT_TRUE(batch.ParseFromString(encoded.batch));
  return batch;
}

TEST(CommandQueue, ABatchIsTheQueuedCommandsInOrderWithFreesWhereTheyWereRecorded) {
  CommandQueue queue;
  EXPECT_TRUE(queue.take_batch().batch.empty());
  wire::Command first = op("aten::neg", 1, 2);
  queue.append(&first);
  queue.free_storage(7);
  queue.free_generator(3);
  wire::Command second = upload(5);
  queue.append_with_payload(&second, "abcd");
  queue.free_storage(8);
  // The free between the two is a command the machine counts too.
  EXPECT_EQ(queue.queued_commands(), 3u);
  EXPECT_GT(queue.queued_bytes(), 4u);  // the commands' bytes and the payload's 4

  const EncodedBatch encoded = queue.take_batch();
  const wire::Batch batch = parse(encoded);
  ASSERT_EQ(batch.commands_size(), 4);
  EXPECT_EQ(batch.commands(0).op().op_name(), "aten::neg");
  // Freed before the upload, so freed before it runs: a session at its memory
  // limit has the freed bytes for the commands recorded after the free.
  ASSERT_TRUE(batch.commands(1).has_free());
  EXPECT_EQ(batch.commands(1).free().storage_ids(0), 7u);
  EXPECT_EQ(batch.commands(1).free().generator_ids(0), 3u);
  EXPECT_EQ(batch.commands(2).upload().payload_index(), 0u);
  EXPECT_EQ(batch.commands(3).free().storage_ids(0), 8u);
  EXPECT_EQ(encoded.payloads, std::vector<std::string>{"abcd"});
  EXPECT_FALSE(queue.has_commands());
  EXPECT_EQ(queue.queued_commands(), 0u);
  EXPECT_EQ(queue.queued_bytes(), 0u);
  EXPECT_EQ(queue.appended(), 4u);
  EXPECT_EQ(queue.sent(), 4u);
  EXPECT_TRUE(queue.take_batch().batch.empty());
}

TEST(CommandQueue, TakingStorageFreesTakesThoseAmongTheCommandsNotSent) {
  // A pause keeps the frees not sent for the resume, wherever they wait.
  CommandQueue queue;
  queue.free_storage(1);
  wire::Command command = op("aten::neg", 2, 3);
  queue.append(&command);  // the free of 1 now travels before it
  queue.free_storage(4);
  EXPECT_EQ(queue.take_storage_frees(), (std::vector<uint64_t>{1, 4}));
  EXPECT_TRUE(queue.take_storage_frees().empty());
  queue.free_storage(5);
  queue.append(&command);
  queue.take_batch();  // sent: nothing left to take
  EXPECT_TRUE(queue.take_storage_frees().empty());
}

TEST(CommandQueue, FreesAloneMakeABatchButAreNotCommandsWaiting) {
  CommandQueue queue;
  queue.free_storage(1);
  EXPECT_FALSE(queue.has_commands());
  EXPECT_EQ(parse(queue.take_batch()).commands(0).free().storage_ids_size(), 1);
}

TEST(CommandQueue, AnOpNameTravelsOnceThenItsNumber) {
  CommandQueue queue;
  wire::Command a = op("aten::add.Tensor", 1, 2), b = op("aten::mul.Tensor", 1, 3),
                c = op("aten::add.Tensor", 2, 4);
  queue.append(&a);
  queue.append(&b);
  queue.append(&c);
  const wire::Batch batch = parse(queue.take_batch());
  EXPECT_EQ(batch.commands(0).op().op_name(), "aten::add.Tensor");
  EXPECT_EQ(batch.commands(1).op().op_name(), "aten::mul.Tensor");
  EXPECT_EQ(batch.commands(2).op().op_name(), "");
  EXPECT_EQ(batch.commands(2).op().op_id(), batch.commands(0).op().op_id());
  EXPECT_NE(batch.commands(1).op().op_id(), batch.commands(0).op().op_id());
  EXPECT_NE(batch.commands(0).op().op_id(), 0u);
  EXPECT_EQ(queue.interned_ops(), 2u);

  // A record sent outside a batch is interned the same way.
  wire::OpRecord execute;
  execute.set_op_name("aten::mul.Tensor");
  queue.intern(&execute);
  EXPECT_EQ(execute.op_id(), batch.commands(1).op().op_id());
  EXPECT_TRUE(execute.op_name().empty());
}

TEST(CommandQueue, RemembersTheLastCommandThatMentionsEachLiveStorage) {
  CommandQueue queue;
  wire::Command a = op("aten::neg", 1, 2), b = op("aten::neg", 2, 3), c = upload(1);
  queue.append(&a);  // command 1: storages 1, 2
  queue.append(&b);  // command 2: storages 2, 3
  queue.take_batch();
  queue.append_with_payload(&c, "x");  // command 3: storage 1
  EXPECT_EQ(queue.last_mention(1), 3u);
  EXPECT_EQ(queue.last_mention(2), 2u);
  EXPECT_EQ(queue.last_mention(3), 2u);
  EXPECT_EQ(queue.last_mention(9), 0u);
  EXPECT_EQ(queue.sent(), 2u);
  EXPECT_EQ(queue.appended(), 3u);
  queue.free_storage(2);
  EXPECT_EQ(queue.last_mention(2), 0u);
  EXPECT_EQ(queue.mentioned_storages(), 2u);
}

TEST(CommandQueue, ResetStartsASessionAfresh) {
  CommandQueue queue;
  wire::Command a = op("aten::neg", 1, 2);
  queue.append(&a);
  queue.free_storage(5);
  queue.reset();
  EXPECT_FALSE(queue.has_commands());
  EXPECT_TRUE(queue.take_batch().batch.empty());
  EXPECT_EQ(queue.appended(), 0u);
  EXPECT_EQ(queue.interned_ops(), 0u);
  EXPECT_EQ(queue.mentioned_storages(), 0u);
  wire::Command again = op("aten::neg", 1, 2);
  queue.append(&again);
  EXPECT_EQ(again.op().op_name(), "aten::neg");  // named again in the new session
}

}  // namespace
}  // namespace mycelya
