// The widget in headless Chromium against the real stack: what a guest does and sees.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  EDGE,
  SCREENSHOTS,
  butler,
  conversationOf,
  guestContext,
  launch,
  proxy,
  recordConnected,
  recordSdkEvents,
  widget,
} from "./harness.mjs";

let browser;
before(async () => (browser = await launch()));
after(async () => browser?.close());

/** No duplicate message ids, seqs strictly increasing: what "exactly once, in order" looks like. */
function assertOnceInOrder(shown) {
  const ids = shown.map((m) => m.messageId);
  assert.equal(new Set(ids).size, ids.length, `a message is shown twice: ${JSON.stringify(shown)}`);
  for (let i = 1; i < shown.length; i++)
    assert.ok(shown[i].seq > shown[i - 1].seq, `out of order: ${JSON.stringify(shown)}`);
}

/** Scrolls the log up until the first message of the conversation is shown. Each older page is
 * awaited by what the guest sees change at the top (the first message, or "Show earlier
 * messages" going away): the butler's answers still arriving at the bottom must not pass for
 * one. */
async function scrollToStart(w) {
  const page = w.log.page();
  const top = () =>
    w.log.evaluate((log) => ({
      first: log.querySelector(".msg[data-key]")?.dataset.key ?? null,
      more: !log.querySelector(".more").hidden,
    }));
  const landed = (first, timeout) =>
    page.waitForFunction(
      (first) => {
        const log = document.querySelector("[data-jack-chat]").shadowRoot.querySelector(".log");
        return (
          log.querySelector(".more").hidden || (log.querySelector(".msg[data-key]")?.dataset.key ?? null) !== first
        );
      },
      first,
      { timeout },
    );
  for (let i = 0; i < 20; i++) {
    // One read of both: an older page hides the button and lands above in the same task.
    const { first, more } = await top();
    if (!more) break;
    await w.log.evaluate((log) => (log.scrollTop = 0));
    try {
      await landed(first, 5_000);
    } catch {
      // A scroll that ends where the log already was fires no scroll event; the guest's other
      // way is the "Show earlier messages" button. A load that is stuck, or never answered,
      // still fails below.
      const scrollTop = await w.log.evaluate((log) => log.scrollTop);
      console.log(
        `scrollToStart: no older page 5 s after scrolling up (scrollTop ${scrollTop}, ${await w.messages.count()} shown); clicking "Show earlier messages"`,
      );
      await w
        .$(".more")
        .click({ timeout: 2_000 })
        .catch(() => {});
      await landed(first, 15_000);
    }
  }
  assert.equal(await w.$(".more").isVisible(), false, "the whole conversation is loaded");
}

describe("a guest on the demo hotel page", () => {
  test("opens the chat, sends, is acked and read, taps quick replies, uses the carousel, reloads to the same history", async () => {
    const context = await guestContext(browser);
    const page = await context.newPage();
    await page.goto(`${EDGE}/`);
    const w = widget(page);
    await w.launcher.waitFor();
    assert.equal(await w.window.isVisible(), false, "closed until the guest opens it");
    await w.open();
    assert.equal(
      await page.evaluate(() => document.querySelector("[data-jack-chat]").shadowRoot.activeElement?.tagName),
      "TEXTAREA",
      "focus goes to the input",
    );
    await w.$(".greeting").filter({ hasText: "Hello! How can I help you today?" }).waitFor();
    await w.online();
    await w.watchTyping();

    await w.send("Hello!");
    const mine = w.own("Hello!");
    // Sending → sent (acked) → read (the concierge marks it read before answering).
    await mine.and(page.locator('[data-status="read"]')).waitFor();
    assert.equal(await w.input.inputValue(), "", "the input is cleared");

    // The butler types, then greets with quick replies.
    await w.replies().filter({ hasText: "I'm Jack, your virtual butler" }).waitFor();
    await w.typing.waitFor({ state: "hidden" });
    const typing = await w.typingSeen();
    assert.deepEqual(
      typing.slice(0, 2).map((t) => t.shown),
      [true, false],
      `the dots came and went: ${JSON.stringify(typing)}`,
    );
    assert.equal(typing[0].replies, 0, "the dots showed before the answer");
    assert.deepEqual(await w.chips.allInnerTexts(), ["Room Service", "Housekeeping", "Concierge", "Other"]);

    // A tap sends the postback, shows it as the guest's message, and the chips go away.
    await w.chips.filter({ hasText: "Concierge" }).click();
    await w.chips.first().waitFor({ state: "detached" });
    await w.own("Concierge").waitFor();

    // The carousel: three cards, scrollable by keyboard, a url button and a postback button.
    const carousel = w.$(".carousel");
    await carousel.waitFor();
    assert.equal(await w.$(".card").count(), 3);
    assert.equal(await w.$(".card-title").first().innerText(), "The Italian Place");
    const menu = w.$(".card a.btn").first();
    assert.equal(await menu.getAttribute("href"), "https://jack.example/restaurants");
    assert.equal(await menu.getAttribute("target"), "_blank");
    assert.equal(await menu.getAttribute("rel"), "noopener noreferrer");
    await carousel.focus();
    await page.keyboard.press("ArrowRight");
    await page.waitForFunction(
      () => document.querySelector("[data-jack-chat]").shadowRoot.querySelector(".carousel").scrollLeft > 0,
    );
    await page.screenshot({ path: `${SCREENSHOTS}desktop.png` });
    await w.$(".card").filter({ hasText: "Sushi Garden" }).getByRole("button", { name: "Book Table" }).click();
    const booked = w.replies().filter({ hasText: "Your table is reserved at" });
    await booked.waitFor();
    assert.equal(await booked.locator("strong").innerText(), "Sushi Garden", "markdown bold is rendered");

    const before = await w.shown();
    assert.equal(before.length, 6);
    assertOnceInOrder(before);

    // A reload shows the whole conversation again, once, in order.
    await page.reload();
    await w.open();
    await w.online();
    await w.replies().filter({ hasText: "Your table is reserved at" }).waitFor();
    const afterReload = await w.shown();
    assert.deepEqual(
      afterReload.map((m) => [m.messageId, m.seq, m.text]),
      before.map((m) => [m.messageId, m.seq, m.text]),
    );
    assertOnceInOrder(afterReload);
    assert.deepEqual(context.problems, []);
    await context.close();
  });

  test("a message typed while the connection is down is delivered once when it returns", async () => {
    const edge = await proxy();
    const context = await guestContext(browser);
    const page = await context.newPage();
    await page.goto(`${edge.url}/`);
    const w = widget(page);
    await w.open();
    await w.online();
    await w.send("hi");
    await w.replies().first().waitFor();

    // The Wi-Fi goes: the socket drops and reconnects fail.
    edge.cut();
    await context.setOffline(true);
    await page.locator('[data-jack-chat] .root[data-link="offline"]').waitFor({ state: "attached" });
    await w.send("I need extra towels");
    const towels = w.own("I need extra towels");
    await towels.and(page.locator('[data-status="queued"]')).waitFor();
    await w.$(".banner").filter({ hasText: "Reconnecting" }).waitFor();

    // The network comes back: the widget reconnects at once and sends the message, once.
    edge.restore();
    await context.setOffline(false);
    await w.online();
    await towels.and(page.locator('[data-status="read"]')).waitFor();
    await w.replies().filter({ hasText: "extra towels" }).waitFor();
    assert.equal(await w.own("I need extra towels").count(), 1);

    // And the server has it once: a reload replays the conversation from storage.
    await page.reload();
    await w.open();
    await w.replies().filter({ hasText: "extra towels" }).waitFor();
    const shown = await w.shown();
    assertOnceInOrder(shown);
    assert.equal(shown.filter((m) => m.text === "I need extra towels").length, 1, JSON.stringify(shown));
    assert.deepEqual(context.problems, []);
    await context.close();
    await edge.close();
  });

  test("a message typed offline survives a reload and is sent when the page comes back", async () => {
    const edge = await proxy();
    const context = await guestContext(browser);
    const page = await context.newPage();
    await page.goto(`${edge.url}/`);
    const w = widget(page);
    await w.open();
    await w.online();
    edge.cut();
    await page.locator('[data-jack-chat] .root[data-link="offline"]').waitFor({ state: "attached" });
    await w.send("late checkout please");
    await w.own("late checkout please").and(page.locator('[data-status="queued"]')).waitFor();
    edge.restore();
    await page.reload();
    await w.open();
    await w.own("late checkout please").and(page.locator('[data-status="read"]')).waitFor();
    assert.equal(await w.own("late checkout please").count(), 1);
    await context.close();
    await edge.close();
  });

  test("two tabs of one guest stay in sync", async () => {
    const context = await guestContext(browser);
    const [a, b] = [await context.newPage(), await context.newPage()];
    await a.goto(`${EDGE}/`);
    const wa = widget(a);
    await wa.open();
    await wa.online();
    await wa.send("Hello from tab A");
    await wa.replies().first().waitFor();
    await b.goto(`${EDGE}/`);
    const wb = widget(b);
    await wb.open();
    await wb.online();
    await wb.own("Hello from tab A").waitFor();

    await wb.send("I need extra towels");
    await wa.own("I need extra towels").waitFor();
    await wa.replies().filter({ hasText: "extra towels" }).waitFor();
    await wb.replies().filter({ hasText: "extra towels" }).waitFor();
    const [sa, sb] = [await wa.shown(), await wb.shown()];
    assertOnceInOrder(sa);
    assert.deepEqual(
      sa.map((m) => m.messageId),
      sb.map((m) => m.messageId),
      "both tabs show the same conversation",
    );
    assert.deepEqual(context.problems, []);
    await context.close();
  });

  test("unread butler messages badge the launcher until the guest opens the chat", async () => {
    const context = await guestContext(browser);
    await recordConnected(context);
    const page = await context.newPage();
    await page.goto(`${EDGE}/`);
    const w = widget(page);
    const conversation = await conversationOf(page);
    const jack = butler();
    await jack.say(conversation, "Good evening! Your room is ready.");
    await jack.say(conversation, "Breakfast is served from 7 am.");
    await w.badge.filter({ hasText: "2" }).waitFor();
    assert.match(await w.launcher.getAttribute("aria-label"), /2 unread/);
    await w.open();
    await w.badge.waitFor({ state: "hidden" });
    await page.reload();
    await w.launcher.waitFor();
    await w.online();
    assert.equal(await w.badge.isVisible(), false, "still read after a reload");
    jack.close();
    await context.close();
  });
});

describe("a long conversation", () => {
  test("a reload shows the latest page, scrolling up loads the rest, once, in order, with one read receipt per burst", async () => {
    const context = await guestContext(browser);
    await recordConnected(context);
    const page = await context.newPage();
    await page.goto(`${EDGE}/`);
    const w = widget(page);
    const conversation = await conversationOf(page);
    const jack = butler();
    for (let i = 1; i <= 70; i++) await jack.say(conversation, `Note ${i} from the front desk`);
    await w.badge.filter({ hasText: "70" }).waitFor();

    const frames = [];
    page.on("websocket", (ws) => {
      ws.on("framesent", (f) => frames.push(["sent", JSON.parse(f.payload)]));
      ws.on("framereceived", (f) => frames.push(["received", JSON.parse(f.payload)]));
    });
    await page.reload();
    await w.open();
    await w.online();
    await w.replies().filter({ hasText: "Note 70 from" }).waitFor();
    assert.equal((await w.shown()).length, 50, "the latest page");
    await w.$(".more").waitFor();
    // The guest scrolls to the top: the older page arrives above.
    await scrollToStart(w);
    await w.replies().filter({ hasText: "Note 1 from" }).waitFor();
    const shown = await w.shown();
    assert.deepEqual(
      shown.map((m) => m.text),
      Array.from({ length: 70 }, (_, i) => `Note ${i + 1} from the front desk`),
    );
    assertOnceInOrder(shown);

    const reads = frames.filter(([dir, f]) => dir === "sent" && f.type === "read");
    assert.ok(
      reads.length >= 1 && reads.length <= 3,
      `one read per burst, not one per message: ${JSON.stringify(reads)}`,
    );
    assert.equal(reads.at(-1)[1].upToSeq, 70);
    assert.deepEqual(
      frames.filter(([dir, f]) => dir === "received" && f.type === "error"),
      [],
      "no error (a read per message would be rate limited)",
    );
    jack.close();
    await context.close();
  });

  test("a burst of messages from the SDK is stored once each, in the order sent", async () => {
    const context = await guestContext(browser);
    const page = await context.newPage();
    const received = [];
    page.on("websocket", (ws) => ws.on("framereceived", (f) => received.push(JSON.parse(f.payload))));
    await page.goto(`${EDGE}/`);
    const w = widget(page);
    await w.online();
    await page.evaluate(() => {
      for (let i = 1; i <= 60; i++) window.JackChat.sendMessage(`burst ${i}`);
    });
    await w.open();
    await page.waitForFunction(
      () =>
        [...document.querySelector("[data-jack-chat]").shadowRoot.querySelectorAll(".msg.guest")].filter(
          (m) => /burst/.test(m.textContent) && /sent|read/.test(m.dataset.status),
        ).length === 60,
      null,
      { timeout: 30_000 },
    );
    assert.ok(!received.some((f) => f.type === "error"), "one message in flight at a time: nothing is rate limited");
    await page.reload();
    await w.open();
    await w.online();
    await w.replies().first().waitFor();
    await scrollToStart(w);
    const burst = (await w.shown()).filter((m) => m.text.startsWith("burst"));
    assert.deepEqual(
      burst.map((m) => m.text),
      Array.from({ length: 60 }, (_, i) => `burst ${i + 1}`),
      "each once, in order",
    );
    assertOnceInOrder(await w.shown());
    await context.close();
  });
});

describe("the SDK on a hotel page", () => {
  test("JackChat.open/close/sendMessage/on: the spec's events fire as the guest chats", async () => {
    const edge = await proxy();
    const context = await guestContext(browser);
    // A hotel's own script listens from the start (registered the moment the SDK exists).
    await recordSdkEvents(context, [
      "connected",
      "disconnected",
      "message",
      "typing",
      "message_sent",
      "error",
      "opened",
      "closed",
    ]);
    const page = await context.newPage();
    await page.goto(`${edge.url}/`);
    const w = widget(page);
    await w.online();
    const names = () => page.evaluate(() => window.__events.map(([name]) => name));
    await page.evaluate(() => window.JackChat.open());
    await w.window.waitFor({ state: "visible" });
    const id = await page.evaluate(() => window.JackChat.sendMessage("I need extra towels"));
    assert.match(id, /^c_/);
    await w.replies().filter({ hasText: "extra towels" }).waitFor();
    await page.evaluate(() => window.JackChat.close());
    await w.window.waitFor({ state: "hidden" });
    edge.cut();
    await page.waitForFunction(() => window.__events.some(([name]) => name === "disconnected"));
    const events = await page.evaluate(() => window.__events);
    const sent = events.find(([name, data]) => name === "message_sent" && data.clientMessageId === id);
    assert.ok(sent, `message_sent for ${id}: ${JSON.stringify(events)}`);
    assert.ok(sent[1].messageId && sent[1].seq >= 1);
    assert.ok(
      events.some(
        ([name, data]) => name === "message" && data.role === "assistant" && /extra towels/.test(data.content),
      ),
    );
    assert.ok(events.some(([name, data]) => name === "typing" && data.isTyping === true));
    const order = (await names()).filter((n) => ["connected", "opened", "closed", "disconnected"].includes(n));
    assert.deepEqual(order, ["connected", "opened", "closed", "disconnected"]);
    assert.deepEqual(context.problems, []);
    await context.close();
    await edge.close();
  });
});
