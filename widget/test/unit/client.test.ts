import assert from "node:assert/strict";
import { test } from "node:test";

import { ChatClient, ChatError } from "../../src/client";
import { WidgetStorage, memory, type KeyValue } from "../../src/storage";
import { FakeWorld, message } from "./fakes";

function setup(kv: KeyValue = memory(), world = new FakeWorld()) {
  const storage = new WidgetStorage(kv, "hotel_1");
  const client = new ChatClient("ws://edge/ws/chat?hotelId=hotel_1", storage, world);
  const events: string[] = [];
  for (const name of ["connected", "disconnected", "message", "message_sent", "error", "typing"] as const) {
    client.events.on(name, () => events.push(name));
  }
  return { client, world, storage, kv, events };
}

/** Opens the socket and completes the handshake, replaying `history` before `identified`. */
function handshake(world: FakeWorld, history: Record<string, unknown>[] = [], visitorId = "v_1", hasMore = false) {
  world.socket.accept();
  world.socket.receive({
    type: "connected",
    sessionId: "s1",
    timestamp: "x",
    protocol: 1,
    limits: { maxMessageSize: 20, maxFileSize: 100 },
  });
  const identify = world.socket.ofType("identify").at(-1)!;
  world.socket.receive({ type: "history", conversationId: "cnv_1", messages: history, hasMore });
  world.socket.receive({
    type: "identified",
    guestId: "g1",
    visitorId,
    visitorToken: `tok_${visitorId}`,
    conversationId: "cnv_1",
  });
  return identify;
}

test("identify, history, send, ack: the happy path with protocol v1's events", () => {
  const { client, world, storage, events } = setup();
  client.start();
  const identify = handshake(world, [message(1), message(2, { role: "guest", clientMessageId: "old" })]);
  assert.match(
    String(identify.visitorId),
    /^vis_[0-9a-f]{32}$/,
    "first time: a new anonymous visitor id, made and kept before the identify",
  );
  assert.deepEqual(
    identify,
    { type: "identify", visitorId: identify.visitorId, resumeConversation: true },
    "no token, no lastSeq: the latest page",
  );
  assert.deepEqual(storage.identity(), { visitorId: "v_1", visitorToken: "tok_v_1" });
  assert.equal(client.link, "online");
  assert.equal(client.limits.maxMessageSize, 20);

  const id = client.sendText("  towels  ");
  assert.deepEqual(world.socket.ofType("message"), [{ type: "message", clientMessageId: id, content: "towels" }]);
  assert.equal(client.timeline.entries.at(-1)?.status, "sending");
  assert.equal(storage.outbox(world.now()).length, 1, "kept until acknowledged");
  world.socket.receive({
    type: "message_ack",
    clientMessageId: id,
    messageId: "m3",
    seq: 3,
    conversationId: "cnv_1",
    timestamp: "x",
  });
  assert.equal(client.timeline.entries.at(-1)?.status, "sent");
  assert.equal(storage.outbox(world.now()).length, 0);
  assert.deepEqual(events, ["message", "message", "connected", "message_sent"]);
});

test("offline: messages wait, then go with their original ids after the resume, shown once", () => {
  const { client, world, storage } = setup();
  client.start();
  handshake(world, [message(1), message(2)]);
  world.socket.drop();
  assert.equal(client.link, "offline");
  const a = client.sendText("first");
  const b = client.sendText("second");
  assert.deepEqual(
    client.timeline.pending().map((e) => e.status),
    ["queued", "queued"],
  );
  assert.equal(storage.outbox(world.now()).length, 2, "kept in storage too");

  world.advance(world.nextDelay()!);
  const identify = handshake(world, [message(3)]);
  assert.equal(identify.lastSeq, 2, "resumes after the highest seq shown");
  assert.equal(identify.visitorToken, "tok_v_1", "proves the stored identity");
  assert.deepEqual(
    world.socket.ofType("message").map((f) => f.clientMessageId),
    [a],
    "the oldest first, with its id",
  );
  // Its echo (stored before the ack came) counts as the ack: the next one goes.
  world.socket.receive({ type: "message", ...message(4, { role: "guest", clientMessageId: a, content: "first" }) });
  assert.deepEqual(
    world.socket.ofType("message").map((f) => f.clientMessageId),
    [a, b],
    "then the next, in the order typed",
  );
  world.socket.receive({
    type: "message_ack",
    clientMessageId: a,
    messageId: "m4",
    seq: 4,
    conversationId: "cnv_1",
    timestamp: "x",
  });
  world.socket.receive({
    type: "message_ack",
    clientMessageId: b,
    messageId: "m5",
    seq: 5,
    conversationId: "cnv_1",
    timestamp: "x",
  });
  assert.deepEqual(
    client.timeline.entries.map((e) => e.seq),
    [1, 2, 3, 4, 5],
  );
  assert.equal(storage.outbox(world.now()).length, 0);
});

test("a reload restores unsent messages from storage and sends them", () => {
  const kv = memory();
  const first = setup(kv);
  first.client.start();
  handshake(first.world);
  first.world.socket.drop();
  const id = first.client.sendText("offline, reloaded");

  const second = setup(kv);
  assert.deepEqual(
    second.client.timeline.pending().map((e) => e.clientMessageId),
    [id],
  );
  second.client.start();
  handshake(second.world, [message(1)]);
  assert.deepEqual(
    second.world.socket.ofType("message").map((f) => f.clientMessageId),
    [id],
  );
});

test("errors: a rejected message fails with a retry; a retryable one is resent by itself", () => {
  const { client, world, storage, events } = setup();
  client.start();
  handshake(world);
  assert.throws(
    () => client.sendText("x".repeat(21)),
    (e: unknown) => e instanceof ChatError && e.code === "MESSAGE_TOO_LARGE",
  );
  assert.throws(
    () => client.sendText("   "),
    (e: unknown) => e instanceof ChatError && e.code === "EMPTY_MESSAGE",
  );

  const bad = client.sendText("bad");
  world.socket.receive({
    type: "error",
    code: "ATTACHMENT_NOT_FOUND",
    message: "no such attachment",
    clientMessageId: bad,
    retryable: false,
  });
  const entry = client.timeline.pending().find((e) => e.clientMessageId === bad)!;
  assert.equal(entry.status, "failed");
  assert.equal(entry.error, "no such attachment");
  assert.equal(storage.outbox(world.now()).length, 0, "a failed message is not resent after a reload");
  client.retry(bad);
  assert.equal(entry.status, "sending");
  assert.equal(world.socket.ofType("message").filter((f) => f.clientMessageId === bad).length, 2);
  world.socket.receive({
    type: "message_ack",
    clientMessageId: bad,
    messageId: "m1",
    seq: 1,
    conversationId: "cnv_1",
    timestamp: "x",
  });

  const busy = client.sendText("busy");
  const after = client.sendText("after");
  world.socket.receive({
    type: "error",
    code: "RATE_LIMITED",
    message: "slow down",
    clientMessageId: busy,
    retryable: true,
  });
  assert.equal(client.timeline.pending().find((e) => e.clientMessageId === busy)?.status, "queued");
  assert.equal(
    world.socket.ofType("message").filter((f) => f.clientMessageId === after).length,
    0,
    "the next waits: order is kept",
  );
  world.advance(2_000);
  assert.equal(
    world.socket.ofType("message").filter((f) => f.clientMessageId === busy).length,
    2,
    "resent with the same id",
  );
  world.socket.receive({
    type: "message_ack",
    clientMessageId: busy,
    messageId: "m2",
    seq: 2,
    conversationId: "cnv_1",
    timestamp: "x",
  });
  assert.equal(world.socket.ofType("message").filter((f) => f.clientMessageId === after).length, 1);
  assert.ok(events.includes("error"));
});

test("a failed identify (backend down) starts over on a new socket", () => {
  const { client, world } = setup();
  client.start();
  world.socket.accept();
  world.socket.receive({ type: "connected", sessionId: "s1", timestamp: "x" });
  world.socket.receive({
    type: "error",
    code: "UNAVAILABLE",
    message: "the chat service is temporarily unavailable",
    retryable: true,
  });
  assert.equal(client.link, "offline");
  world.advance(world.nextDelay()!);
  assert.equal(world.sockets.length, 2);
});

test("two tabs racing for a new visitor id end up on one visitor", () => {
  const kv = memory();
  const { client, world, storage } = setup(kv);
  storage.setIdentity({ visitorId: "v_shared" });
  client.start();
  world.socket.accept();
  world.socket.receive({ type: "connected", sessionId: "s1", timestamp: "x" });
  // Meanwhile the other tab bound v_shared and stored its token.
  storage.setIdentity({ visitorId: "v_shared", visitorToken: "tok_shared" });
  world.socket.receive({
    type: "identified",
    guestId: "g2",
    visitorId: "v_other",
    visitorToken: "tok_other",
    conversationId: "cnv_2",
  });
  const again = world.socket.ofType("identify").at(-1)!;
  assert.equal(again.visitorToken, "tok_shared", "identifies again as the shared visitor");
  assert.deepEqual(storage.identity(), { visitorId: "v_shared", visitorToken: "tok_shared" });
});

test("read receipts go out once per new seq; unread counts the butler's unseen messages", () => {
  const { client, world, storage } = setup();
  client.start();
  handshake(world, [message(1), message(2, { role: "guest" }), message(3)]);
  assert.equal(client.unread(), 2);
  client.markSeen();
  client.markSeen();
  assert.deepEqual(world.socket.ofType("read"), [{ type: "read", upToSeq: 3 }]);
  assert.equal(storage.seen("cnv_1"), 3);
  assert.equal(storage.seen("cnv_other"), 0, "what was seen belongs to its conversation");
  assert.equal(client.unread(), 0);
  world.socket.receive({ type: "message", ...message(4, { role: "staff" }) });
  assert.equal(client.unread(), 1);
  world.socket.receive({ type: "read", upToSeq: 2, role: "assistant", timestamp: "x" });
  assert.equal(client.timeline.entries[1]?.status, "read");
});

test("identify as another visitor (a signed hotel id) starts that visitor's conversation afresh", () => {
  const { client, world, storage } = setup();
  client.start();
  handshake(world, [message(1)]);
  world.socket.drop();
  const unsent = client.sendText("first guest only");
  world.advance(world.nextDelay()!);
  world.socket.accept();
  world.socket.receive({ type: "connected", sessionId: "s2", timestamp: "x" });
  client.identify({ visitorId: "booking_42", userHash: "abc", name: "Ana" });
  const frame = world.socket.ofType("identify").at(-1)!;
  assert.deepEqual(frame, {
    type: "identify",
    visitorId: "booking_42",
    userHash: "abc",
    name: "Ana",
    resumeConversation: true,
  });
  assert.equal(client.timeline.entries.length, 0, "the other visitor's messages are gone, unsent ones too");
  assert.ok(!world.socket.ofType("message").some((f) => f.clientMessageId === unsent), "never sent as the new guest");
  world.socket.receive({
    type: "history",
    conversationId: "cnv_9",
    messages: [message(1, { conversationId: "cnv_9", messageId: "x1" })],
    hasMore: false,
  });
  world.socket.receive({
    type: "identified",
    guestId: "g9",
    visitorId: "booking_42",
    visitorToken: "tok_42",
    conversationId: "cnv_9",
  });
  assert.deepEqual(
    client.timeline.entries.map((e) => e.messageId),
    ["x1"],
  );
  assert.equal(storage.identity()?.visitorToken, "tok_42");
});

test("typing is sent when the guest starts, refreshed sparingly, and stopped after a pause", () => {
  const { client, world } = setup();
  client.start();
  handshake(world);
  client.typing(true);
  client.typing(true);
  world.advance(1000);
  client.typing(true);
  assert.deepEqual(world.socket.ofType("typing"), [{ type: "typing", isTyping: true }]);
  world.advance(4000);
  assert.deepEqual(world.socket.ofType("typing").at(-1), { type: "typing", isTyping: false });
});

test("a socket that owes an answer and hears nothing is replaced", () => {
  const { client, world } = setup();
  client.start();
  handshake(world);
  client.sendText("hello?");
  world.advance(14_000);
  assert.equal(world.sockets.length, 1);
  world.advance(1_000);
  assert.equal(client.link, "offline", "no ack and no frame for 15 s: the socket is given up");
  world.advance(world.nextDelay()!);
  assert.equal(world.sockets.length, 2);
  handshake(world);
  assert.equal(world.socket.ofType("message").length, 1, "and the message goes again");
});

test("a nudge replaces a socket that owes an answer (the network changed under it)", () => {
  const { client, world } = setup();
  client.start();
  handshake(world);
  client.sendText("hello?");
  client.nudge();
  assert.equal(client.link, "offline");
  assert.equal(world.nextDelay() !== null, true);
});

test("typing is not sent before the session is identified", () => {
  const { client, world } = setup();
  client.start();
  world.socket.accept();
  world.socket.receive({ type: "connected", sessionId: "s1", timestamp: "x" });
  client.typing(true);
  assert.deepEqual(world.socket.ofType("typing"), []);
});

test("a burst from the SDK is paced under the edge's frame limit: 20 at once, then 10 a second", () => {
  const { client, world } = setup();
  client.start();
  handshake(world);
  const ack = (id: string, seq: number) =>
    world.socket.receive({
      type: "message_ack",
      clientMessageId: id,
      messageId: `m${seq}`,
      seq,
      conversationId: "cnv_1",
      timestamp: "x",
    });
  const ids = Array.from({ length: 30 }, (_, i) => client.sendText(`burst ${i + 1}`));
  // Acks come back at once: the first 20 go without waiting.
  for (let i = 0; i < 20; i++) ack(ids[i], i + 1);
  assert.equal(world.socket.ofType("message").length, 20);
  // The 21st waits for the bucket to refill (100 ms a message), then they go one by one.
  world.advance(99);
  assert.equal(world.socket.ofType("message").length, 20);
  world.advance(1);
  assert.equal(world.socket.ofType("message").length, 21);
  for (let i = 20; i < 30; i++) {
    ack(ids[i], i + 1);
    world.advance(100);
  }
  assert.deepEqual(
    world.socket.ofType("message").map((f) => f.clientMessageId),
    ids,
    "all of them, in order, each once",
  );
  assert.ok(client.timeline.pending().length === 0);
});

test("the pace follows the limit the edge announces", () => {
  const { client, world } = setup();
  client.start();
  world.socket.accept();
  world.socket.receive({
    type: "connected",
    sessionId: "s1",
    timestamp: "x",
    protocol: 1,
    limits: { maxMessageSize: 100, maxFileSize: 100, maxFramesPerSecond: 4 },
  });
  world.socket.receive({ type: "history", conversationId: "cnv_1", messages: [], hasMore: false });
  world.socket.receive({
    type: "identified",
    guestId: "g1",
    visitorId: "v_1",
    visitorToken: "tok",
    conversationId: "cnv_1",
  });
  const ids = Array.from({ length: 6 }, (_, i) => client.sendText(`m${i}`));
  for (let i = 0; i < 4; i++)
    world.socket.receive({
      type: "message_ack",
      clientMessageId: ids[i],
      messageId: `m${i}`,
      seq: i + 1,
      conversationId: "cnv_1",
      timestamp: "x",
    });
  // 4 frames a second: bursts of 4 messages, then 2 a second (half, for typing and reads).
  assert.equal(world.socket.ofType("message").length, 4);
  world.advance(499);
  assert.equal(world.socket.ofType("message").length, 4);
  world.advance(1);
  assert.equal(world.socket.ofType("message").length, 5);
});

test("an older page refused by the rate limit is asked for again; one that comes anyway is not", () => {
  const { client, world } = setup();
  client.start();
  handshake(world, [message(51), message(52)], "v_1", true);
  const asked = () => world.socket.ofType("load_history").map((f) => f.beforeSeq);
  assert.equal(client.more, true);
  assert.ok(client.loadOlder());
  assert.equal(client.loadOlder(), false, "one page at a time");
  assert.deepEqual(asked(), [51]);

  // The edge refused the request: without an answer the guest could never scroll further back.
  world.socket.receive({ type: "error", code: "RATE_LIMITED", message: "slow down", retryable: true });
  assert.equal(client.loadOlder(), false, "still waiting for it");
  world.advance(2_000);
  assert.deepEqual(asked(), [51, 51], "asked again for the same page");
  world.socket.receive({
    type: "history",
    conversationId: "cnv_1",
    messages: [message(49), message(50)],
    hasMore: true,
  });
  assert.deepEqual(
    client.timeline.entries.map((e) => e.seq),
    [49, 50, 51, 52],
  );

  // A `read` or `typing` refused while a page is on its way: the page comes, nothing is asked twice.
  assert.ok(client.loadOlder());
  world.socket.receive({ type: "error", code: "RATE_LIMITED", message: "slow down", retryable: true });
  world.socket.receive({
    type: "history",
    conversationId: "cnv_1",
    messages: [message(47), message(48)],
    hasMore: false,
  });
  world.advance(2_000);
  assert.deepEqual(asked(), [51, 51, 49]);
  assert.deepEqual(
    client.timeline.entries.map((e) => e.seq),
    [47, 48, 49, 50, 51, 52],
  );
  assert.equal(client.more, false);
});

test("a second answer to a page asked for twice is not taken for the next page", () => {
  const { client, world } = setup();
  client.start();
  handshake(world, [message(51), message(52)], "v_1", true);
  const asked = () => world.socket.ofType("load_history").map((f) => f.beforeSeq);
  // A `read` beside the request is refused: the page is asked for again, and both answers come.
  assert.ok(client.loadOlder());
  world.socket.receive({ type: "error", code: "RATE_LIMITED", message: "slow down", retryable: true });
  world.advance(2_000);
  assert.deepEqual(asked(), [51, 51]);
  world.socket.receive({
    type: "history",
    conversationId: "cnv_1",
    messages: [message(49), message(50)],
    hasMore: true,
  });
  assert.ok(client.loadOlder(), "the guest scrolls on");
  assert.deepEqual(asked(), [51, 51, 49]);
  // The copy of the first answer is not the answer to the second request...
  world.socket.receive({
    type: "history",
    conversationId: "cnv_1",
    messages: [message(49), message(50)],
    hasMore: true,
  });
  assert.equal(client.loadOlder(), false, "still waiting for the page before 49");
  // ...this is, and it says there is nothing older: "Show earlier messages" goes away.
  world.socket.receive({ type: "history", conversationId: "cnv_1", messages: [message(48)], hasMore: false });
  assert.deepEqual(
    client.timeline.entries.map((e) => e.seq),
    [48, 49, 50, 51, 52],
  );
  assert.equal(client.more, false);
});

test("a chat left open identifies again halfway to its token's expiry, and keeps the renewed token", () => {
  const { client, world, storage } = setup();
  client.start();
  world.socket.accept();
  world.socket.receive({
    type: "connected",
    sessionId: "s1",
    timestamp: "x",
    protocol: 1,
    limits: { maxMessageSize: 20, maxFileSize: 100 },
  });
  const day = 24 * 3600 * 1000;
  const expires = (at: number) => new Date(at).toISOString();
  world.socket.receive({
    type: "identified",
    guestId: "g1",
    visitorId: "vis_1",
    visitorToken: "tok_1",
    conversationId: "cnv_1",
    visitorTokenExpiresAt: expires(world.now() + 30 * day),
  });
  assert.equal(world.socket.ofType("identify").length, 1);
  world.advance(15 * day - 1);
  assert.equal(world.socket.ofType("identify").length, 1, "not before half the lifetime");
  world.advance(1);
  const again = world.socket.ofType("identify");
  assert.equal(again.length, 2, "identifies again on the open socket");
  assert.equal(again[1]!.visitorToken, "tok_1", "with the token it has");
  world.socket.receive({
    type: "identified",
    guestId: "g1",
    visitorId: "vis_1",
    visitorToken: "tok_2",
    conversationId: "cnv_1",
    visitorTokenExpiresAt: expires(world.now() + 30 * day),
  });
  assert.equal(storage.identity()?.visitorToken, "tok_2", "the renewed token is kept");
  assert.equal(client.visitorToken(), "tok_2", "and used for uploads");
  // Stopped, nothing is renewed (the next connect identifies anyway).
  client.stop();
  world.advance(20 * day);
  assert.equal(world.socket.ofType("identify").length, 2);
});

test("an identify refused for a while is tried again no sooner than the server asked", () => {
  const { client, world } = setup();
  client.start();
  world.socket.accept();
  world.socket.receive({
    type: "connected",
    sessionId: "s1",
    timestamp: "x",
    protocol: 1,
    limits: { maxMessageSize: 20, maxFileSize: 100 },
  });
  world.socket.receive({
    type: "error",
    code: "RATE_LIMITED",
    message: "too many new visitors",
    retryable: true,
    retryAfterMs: 45_000,
  });
  assert.equal(client.link, "offline");
  assert.equal(world.sockets.length, 1);
  world.advance(44_999);
  assert.equal(world.sockets.length, 1, "not before the wait is over");
  world.advance(1);
  assert.equal(world.sockets.length, 2, "then on a fresh socket");
});
