import assert from "node:assert/strict";
import { test } from "node:test";

import { BACKOFF_MAX_MS, CONNECT_TIMEOUT_MS, Connection, backoffDelay } from "../../src/connection";
import { FakeWorld } from "./fakes";

function connection(world: FakeWorld) {
  const log: string[] = [];
  const c = new Connection("ws://edge/ws/chat?hotelId=h", world, {
    open: () => log.push("open"),
    frame: (text) => log.push(`frame ${text}`),
    closed: (code, _reason, retryIn) => log.push(`closed ${code} ${retryIn}`),
  });
  return { c, log };
}

test("backoff grows exponentially to a cap, with jitter between half and all of it", () => {
  assert.equal(backoffDelay(0, 0), 250);
  assert.equal(backoffDelay(0, 1), 500);
  assert.equal(backoffDelay(3, 0.5), 3000);
  assert.equal(backoffDelay(50, 1), BACKOFF_MAX_MS);
  assert.equal(backoffDelay(50, 0), BACKOFF_MAX_MS / 2);
  const spread = new Set([0, 0.25, 0.5, 0.75, 1].map((r) => backoffDelay(4, r)));
  assert.equal(spread.size, 5, "different random draws give different delays");
});

test("a lost connection is retried with growing waits, and a working session resets them", () => {
  const world = new FakeWorld();
  const { c, log } = connection(world);
  c.start();
  world.socket.drop();
  assert.equal(c.state, "waiting");
  assert.equal(world.nextDelay(), backoffDelay(0, 0.5));
  world.advance(backoffDelay(0, 0.5));
  assert.equal(world.sockets.length, 2);
  world.socket.drop();
  assert.equal(world.nextDelay(), backoffDelay(1, 0.5), "the second wait is longer");
  world.advance(backoffDelay(1, 0.5));
  world.socket.accept();
  assert.equal(c.state, "open");
  c.healthy();
  world.socket.drop();
  assert.equal(world.nextDelay(), backoffDelay(0, 0.5), "after a healthy session the backoff starts over");
  assert.deepEqual(log.filter((l) => l.startsWith("closed")).length, 3);
});

test("a nudge (tab visible, network back) reconnects at once instead of waiting", () => {
  const world = new FakeWorld();
  const { c } = connection(world);
  c.start();
  world.socket.drop();
  world.socket.drop; // still the same, dropped socket
  for (let i = 0; i < 6; i++) {
    world.advance(world.nextDelay()!);
    world.socket.drop();
  }
  assert.ok(world.nextDelay()! > 10_000, "a long wait after many failures");
  const before = world.sockets.length;
  c.nudge();
  assert.equal(world.sockets.length, before + 1, "a new socket right away");
  assert.equal(c.state, "connecting");
  c.nudge();
  assert.equal(world.sockets.length, before + 1, "a nudge while connecting changes nothing");
});

test("a socket that never opens is given up and retried", () => {
  const world = new FakeWorld();
  const { c, log } = connection(world);
  c.start();
  world.advance(CONNECT_TIMEOUT_MS);
  assert.ok(world.sockets[0]!.closed, "the stuck socket is closed");
  assert.equal(c.state, "waiting");
  assert.match(log.at(-1)!, /^closed 1006 \d+$/);
});

test("close codes 4000 and 4004 (missing or unknown hotel) stop reconnecting", () => {
  for (const code of [4000, 4004]) {
    const world = new FakeWorld();
    const { c, log } = connection(world);
    c.start();
    world.socket.accept();
    world.socket.drop(code, "Unknown hotel ID");
    assert.equal(c.state, "stopped");
    assert.equal(log.at(-1), `closed ${code} null`);
    world.advance(10 * BACKOFF_MAX_MS);
    assert.equal(world.sockets.length, 1, "no new socket");
  }
});

test("frames are passed on only from the current socket; send fails when not open", () => {
  const world = new FakeWorld();
  const { c, log } = connection(world);
  c.start();
  assert.equal(c.send("x"), false);
  const first = world.socket;
  first.accept();
  first.receive({ type: "connected" });
  assert.equal(c.send('{"type":"typing"}'), true);
  c.stop();
  first.receive({ type: "late" });
  assert.ok(!log.some((l) => l.includes("late")), "a stopped connection hears nothing");
  assert.equal(first.closed?.code, 1000);
  world.advance(10 * BACKOFF_MAX_MS);
  assert.equal(world.sockets.length, 1, "stop means no reconnect");
});
