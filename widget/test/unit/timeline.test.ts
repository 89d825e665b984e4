import assert from "node:assert/strict";
import { test } from "node:test";

import type { ChatMessage } from "../../src/protocol";
import { Timeline } from "../../src/timeline";
import { message } from "./fakes";

const m = (seq: number, fields: Record<string, unknown> = {}) => message(seq, fields) as unknown as ChatMessage;
const seqs = (t: Timeline) => t.entries.map((e) => e.seq ?? e.key);

test("messages are shown once each, by messageId, in seq order whatever order they arrive in", () => {
  const t = new Timeline();
  for (const seq of [3, 1, 2, 3, 1, 5, 4]) t.receive(m(seq));
  assert.deepEqual(seqs(t), [1, 2, 3, 4, 5]);
  assert.equal(t.receive(m(2)), null, "a duplicate is refused");
  assert.equal(t.highestSeq(), 5);
  assert.equal(t.lowestSeq(), 1);
});

test("the guest's unsent messages stay after every stored one until acknowledged", () => {
  const t = new Timeline();
  t.receive(m(1));
  t.addPending({ type: "message", clientMessageId: "c1", content: "towels please" }, "sending");
  t.receive(m(2));
  assert.deepEqual(seqs(t), [1, 2, "c1"]);
  const acked = t.ack("c1", "m3", 3, "2026-11-26T10:00:01.000Z");
  assert.equal(acked?.status, "sent");
  assert.deepEqual(seqs(t), [1, 2, 3]);
  assert.equal(t.ack("c1", "m3", 3, "x"), null, "a second ack changes nothing");
  assert.equal(
    t.receive(m(3, { role: "guest", clientMessageId: "c1" })),
    null,
    "the echo of an acked message is a duplicate",
  );
});

test("a replayed own message acknowledges the pending one instead of showing it twice", () => {
  const t = new Timeline();
  t.addPending({ type: "message", clientMessageId: "c1", content: "hello" }, "sending");
  const entry = t.receive(m(7, { role: "guest", clientMessageId: "c1", content: "hello" }));
  assert.equal(entry?.key, "c1", "the same entry (same DOM node) is confirmed");
  assert.equal(entry?.seq, 7);
  assert.equal(t.entries.length, 1);
  assert.equal(t.ack("c1", "m7", 7, "x"), null, "the late ack is harmless");
  assert.equal(t.pending().length, 0);
});

test("an ack that lands after newer messages moves the message to its seq", () => {
  const t = new Timeline();
  t.addPending({ type: "message", clientMessageId: "c1", content: "a" }, "sending");
  t.receive(m(5));
  t.ack("c1", "m4", 4, "x");
  assert.deepEqual(seqs(t), [4, 5]);
});

test("read receipts mark the guest's stored messages up to that seq, including later acks", () => {
  const t = new Timeline();
  t.receive(m(1, { role: "guest" }));
  t.addPending({ type: "message", clientMessageId: "c2", content: "b" }, "sending");
  t.receive(m(3));
  assert.deepEqual(
    t.markRead(2).map((e) => e.seq),
    [1],
  );
  assert.equal(t.ack("c2", "m2", 2, "x")?.status, "read", "read already covers it");
  assert.deepEqual(t.markRead(2), [], "an old receipt changes nothing");
});

test("a failed message can be retried; reset keeps only what was never stored", () => {
  const t = new Timeline();
  t.receive(m(1));
  t.addPending({ type: "postback", clientMessageId: "c1", payload: "room_service", label: "Room Service" }, "sending");
  assert.equal(t.entries[1]?.content, "Room Service", "a postback shows its label");
  assert.equal(t.setStatus("c1", "failed", "too large")?.error, "too large");
  t.reset();
  assert.deepEqual(seqs(t), ["c1"]);
  assert.equal(t.receive(m(1))?.seq, 1, "after a reset the same ids are new again");
});

test("a reconnect resumes after the last seq with nothing missing before it", () => {
  const t = new Timeline();
  for (const seq of [1, 2, 3]) t.receive(m(seq));
  t.addPending({ type: "message", clientMessageId: "c1", content: "x" }, "sending");
  // Our ack (seq 5) lands while the butler's seq 4 is still on its way.
  t.ack("c1", "m5", 5, "x");
  assert.equal(t.highestSeq(), 5);
  assert.equal(t.resumeAfter(), 3, "resuming after 5 would lose 4 for good");
  t.receive(m(4));
  assert.equal(t.resumeAfter(), 5);
  const paged = new Timeline();
  for (const seq of [51, 52, 53]) paged.receive(m(seq));
  assert.equal(paged.resumeAfter(), 53, "a later page starts where it starts");
  assert.equal(new Timeline().resumeAfter(), 0);
});
