// The widget on pages it does not control: hostile content from the butler side, host pages
// with clashing CSS and a strict Content-Security-Policy, keyboard-only guests, small screens.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  EDGE,
  SCREENSHOTS,
  butler,
  conversationOf,
  guestContext,
  launch,
  recordConnected,
  site,
  widget,
} from "./harness.mjs";

let browser;
before(async () => (browser = await launch()));
after(async () => browser?.close());

/** Everything here would set `window.__pwned` (or open a dialog) if it ever ran. */
const XSS = [
  "<script>window.__pwned = 1</script>",
  '<img src=x onerror="window.__pwned = 2">',
  '<svg onload="window.__pwned = 3"><circle r="9"/></svg>',
  '<iframe src="javascript:parent.__pwned = 4"></iframe>',
  "[click me](javascript:window.__pwned=5)",
  "[or me](JaVaScRiPt:window.__pwned=6)",
  "[data](data:text/html,<script>parent.__pwned=7</script>)",
  '<a href="javascript:window.__pwned=8">raw link</a>',
  '**<b onmouseover="window.__pwned=9">bold</b>**',
  "`<style>* { display: none }</style>`",
  '"><img src=x onerror=alert(10)>',
];

describe("hostile content from the butler side", () => {
  test("an XSS corpus in messages, buttons, cards and quick replies renders as inert text", async () => {
    const context = await guestContext(browser);
    await recordConnected(context);
    const page = await context.newPage();
    await page.goto(`${EDGE}/`);
    const w = widget(page);
    await w.open();
    const conversation = await conversationOf(page);
    const jack = butler();
    for (const content of XSS) await jack.say(conversation, content);
    await jack.say(conversation, "Rich parts", {
      buttons: [
        {
          type: "url",
          label: '<img src=x onerror="window.__pwned=20">',
          url: "https://hotel.example/?q=<script>window.__pwned=21</script>",
        },
        { type: "url", label: "Safe menu", url: "https://hotel.example/menu" },
      ],
      cards: [
        {
          title: '<svg onload="window.__pwned=22">',
          subtitle: "<script>window.__pwned=23</script>",
          buttons: [{ type: "postback", label: '<b onclick="window.__pwned=24">x</b>', payload: "x" }],
        },
      ],
      quickReplies: [{ label: '<img src=x onerror="window.__pwned=25">', payload: "x" }],
    });
    await w.replies().filter({ hasText: "Rich parts" }).waitFor();
    // Hover and click what could carry a handler, then give anything queued a chance to run.
    for (const link of await w.$(".log a").all()) await link.hover();
    await w
      .$(".bubble b, .bubble img, .bubble svg")
      .count()
      .then((n) => assert.equal(n, 0, "no element from the content"));
    await page.evaluate(() => new Promise((resolve) => setTimeout(resolve, 300)));

    assert.equal(await page.evaluate(() => window.__pwned), undefined, "nothing ran");
    const shown = await w.shown();
    for (const content of XSS.filter((c) => !c.startsWith("[") && !c.startsWith("`") && !c.startsWith("**"))) {
      assert.ok(
        shown.some((m) => m.text === content),
        `shown as text: ${content}`,
      );
    }
    const dangerous = await page.evaluate(() => {
      const root = document.querySelector("[data-jack-chat]").shadowRoot;
      return {
        elements: [...root.querySelectorAll("script, iframe, svg:not([aria-hidden]), style, img, object, embed")].map(
          (e) => e.outerHTML,
        ),
        handlers: [...root.querySelectorAll("*")].flatMap((e) =>
          [...e.attributes].filter((a) => a.name.startsWith("on")).map((a) => a.name),
        ),
        links: [...root.querySelectorAll("a")].map((a) => ({
          href: a.getAttribute("href"),
          rel: a.rel,
          target: a.target,
        })),
      };
    });
    assert.deepEqual(dangerous.elements, []);
    assert.deepEqual(dangerous.handlers, []);
    assert.deepEqual(
      dangerous.links,
      [
        {
          href: "https://hotel.example/?q=%3Cscript%3Ewindow.__pwned=21%3C/script%3E",
          rel: "noopener noreferrer",
          target: "_blank",
        },
        { href: "https://hotel.example/menu", rel: "noopener noreferrer", target: "_blank" },
      ],
      "only http(s) links survive, escaped, opening in a new tab without an opener",
    );
    assert.equal(await w.$(".card-title").innerText(), '<svg onload="window.__pwned=22">');
    assert.equal(await w.chips.innerText(), '<img src=x onerror="window.__pwned=25">');
    assert.deepEqual(context.problems, []);
    jack.close();
    await context.close();
  });
});

/** A hotel page that fights the widget: global resets and `!important` on every element and
 * on the widget's own class names, under a CSP without 'unsafe-inline' or 'unsafe-eval'. */
function hostilePage(nonce) {
  const csp = [
    "default-src 'none'",
    `script-src 'nonce-${nonce}' ${EDGE}`,
    `style-src 'nonce-${nonce}'`,
    `connect-src ${EDGE} ${EDGE.replace(/^http/, "ws")}`,
    "img-src https:",
  ].join("; ");
  return {
    headers: { "content-security-policy": csp },
    body: `<!doctype html><html><head><meta charset="utf-8"><title>Hostile hotel</title>
<style nonce="${nonce}">
  * { font-size: 31px !important; color: #f0f !important; line-height: 3 !important; box-sizing: content-box !important; }
  div, button, textarea, section, span { display: block !important; position: static !important; width: 90% !important; margin: 20px !important; padding: 30px !important; border: 5px dashed lime !important; background: yellow !important; transform: rotate(3deg) !important; opacity: .5 !important; visibility: visible; }
  .launcher, .window, .bubble, .msg, .chip, .log, .root, .header, [data-jack-chat] { display: none !important; }
  body { font-family: "Comic Sans MS", cursive !important; }
  p.probe { border-top: 7px solid rgb(1, 2, 3); }
</style></head>
<body><h1>Hostile hotel</h1><p class="probe msg bubble">The page's own paragraph.</p>
<script nonce="${nonce}">
  window.__violations = [];
  document.addEventListener('securitypolicyviolation', (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));
  window.JackChatConfig = { hotelId: 'demo_hotel', apiUrl: '${EDGE}', theme: { primaryColor: '#ffcc00', fontFamily: 'Georgia, serif' }, position: 'bottom-left', greeting: 'Welcome to the hostile hotel' };
</script>
<script src="${EDGE}/widget.js" async></script>
</body></html>`,
  };
}

/** The widget's layout and look, as numbers a clash would change. */
async function measure(page) {
  return page.evaluate(() => {
    const host = document.querySelector("[data-jack-chat]");
    const root = host.shadowRoot;
    const box = (sel) => {
      const e = root.querySelector(sel);
      return [e.offsetWidth, e.offsetHeight];
    };
    const style = (sel, prop) => getComputedStyle(root.querySelector(sel))[prop];
    return {
      launcher: box(".launcher"),
      window: box(".window"),
      input: box("textarea"),
      bubbleFontSize: style(".greeting .bubble", "fontSize"),
      bubbleColor: style(".greeting .bubble", "color"),
      launcherOpacity: style(".launcher", "opacity"),
      hostOpacity: getComputedStyle(host).opacity,
      hostTransform: getComputedStyle(host).transform,
    };
  });
}

describe("the widget on a hotel page it does not control", () => {
  test("clashing host CSS changes nothing inside, nothing leaks out, and a strict CSP is kept", async () => {
    const nonce = "n0nce" + Math.random().toString(36).slice(2);
    const hotel = await site({
      "/": hostilePage(nonce),
      "/plain": {
        body: `<!doctype html><meta charset="utf-8"><script>window.JackChatConfig = { hotelId: 'demo_hotel', apiUrl: '${EDGE}', theme: { primaryColor: '#ffcc00', fontFamily: 'Georgia, serif' }, position: 'bottom-left', greeting: 'Welcome to the hostile hotel' };</script><script src="${EDGE}/widget.js" async></script>`,
      },
    });
    const context = await guestContext(browser);
    const page = await context.newPage();

    await page.goto(`${hotel.url}/plain`);
    const w = widget(page);
    await w.open();
    await w.online();
    const clean = await measure(page);

    await page.goto(`${hotel.url}/`);
    await w.open();
    await w.online();
    await w.send("Hello!");
    await w.replies().first().waitFor();
    const hostile = await measure(page);
    assert.deepEqual(hostile, clean, "the widget looks the same on the hostile page");
    assert.equal(hostile.bubbleFontSize, "15px");

    // Position bottom-left, primary colour yellow with dark text (contrast), as configured.
    const launcher = await w.launcher.boundingBox();
    assert.ok(launcher.x < 100 && launcher.y > 600, `bottom-left: ${JSON.stringify(launcher)}`);
    assert.equal(await w.launcher.evaluate((b) => getComputedStyle(b).backgroundColor), "rgb(255, 204, 0)");
    assert.equal(await w.launcher.evaluate((b) => getComputedStyle(b).color), "rgb(0, 0, 0)");
    assert.equal(
      await w
        .$(".bubble")
        .first()
        .evaluate((b) => getComputedStyle(b).fontFamily),
      "Georgia, serif",
    );

    // Nothing leaks out: the page's own element with the widget's class names keeps its style.
    const probe = await page
      .locator("p.probe")
      .evaluate((p) => [
        getComputedStyle(p).borderTopWidth,
        getComputedStyle(p).borderTopColor,
        getComputedStyle(p).display,
      ]);
    assert.deepEqual(probe, ["7px", "rgb(1, 2, 3)", "none"]);
    assert.equal(
      await page.evaluate(() => getComputedStyle(document.body).fontFamily),
      '"Comic Sans MS", cursive',
      "body styles untouched",
    );

    assert.deepEqual(await page.evaluate(() => window.__violations), [], "no CSP violation");
    assert.deepEqual(context.problems, []);
    await context.close();
    await hotel.close();
  });

  test("keyboard only: reach the launcher, open, send, pick a quick reply, close with Escape", async () => {
    const context = await guestContext(browser);
    const page = await context.newPage();
    await page.goto(`${EDGE}/`);
    const w = widget(page);
    await w.launcher.waitFor();
    const focused = () =>
      page.evaluate(() => {
        const inner = document.querySelector("[data-jack-chat]").shadowRoot.activeElement;
        return inner ? inner.className || inner.tagName : document.activeElement?.tagName;
      });
    for (let i = 0; i < 20 && (await focused()) !== "launcher"; i++) await page.keyboard.press("Tab");
    assert.equal(await focused(), "launcher", "Tab reaches the launcher");
    assert.match(await w.launcher.getAttribute("aria-label"), /Chat with Jack/);
    await page.keyboard.press("Enter");
    await w.window.waitFor({ state: "visible" });
    assert.equal(await focused(), "TEXTAREA", "focus moves into the chat");
    await w.online();
    await page.keyboard.type("Hello!");
    await page.keyboard.press("Enter");
    await w.chips.first().waitFor();
    // Shift+Tab from the input goes back to the attach button, then the quick replies (reading order).
    await page.keyboard.press("Shift+Tab");
    assert.equal(await focused(), "attach");
    for (let i = 0; i < 4; i++) await page.keyboard.press("Shift+Tab");
    assert.equal(await focused(), "chip");
    assert.equal(
      await page.evaluate(() => document.querySelector("[data-jack-chat]").shadowRoot.activeElement.textContent),
      "Room Service",
    );
    await page.keyboard.press("Enter");
    await w.own("Room Service").waitFor();
    await w.replies().filter({ hasText: "in-room dining" }).waitFor();
    await page.keyboard.press("Escape");
    await w.window.waitFor({ state: "hidden" });
    assert.equal(await focused(), "launcher", "Escape gives focus back to the launcher");
    // Every control has a name.
    const unnamed = await page.evaluate(() => {
      const root = document.querySelector("[data-jack-chat]").shadowRoot;
      return [...root.querySelectorAll("button, textarea, a, [tabindex]")]
        .filter((e) => !(e.getAttribute("aria-label") || e.textContent.trim()))
        .map((e) => e.outerHTML);
    });
    assert.deepEqual(unnamed, []);
    assert.equal(await w.log.getAttribute("role"), "log");
    assert.equal(await w.log.getAttribute("aria-live"), "polite");
    await context.close();
  });

  test("on a phone the open chat fills the screen", async () => {
    const context = await guestContext(browser, {
      viewport: { width: 375, height: 667 },
      isMobile: true,
      hasTouch: true,
    });
    const page = await context.newPage();
    await page.goto(`${EDGE}/`);
    const w = widget(page);
    await w.launcher.tap();
    await w.online();
    await w.send("Any restaurant nearby?");
    await w.$(".carousel").waitFor();
    const box = await w.window.boundingBox();
    assert.deepEqual([box.x, box.y, box.width, box.height], [0, 0, 375, 667]);
    // The carousel scrolls by touch-style scrolling too.
    await w.$(".carousel").evaluate((c) => c.scrollBy({ left: 200 }));
    await page.waitForFunction(
      () => document.querySelector("[data-jack-chat]").shadowRoot.querySelector(".carousel").scrollLeft > 0,
    );
    await page.screenshot({ path: `${SCREENSHOTS}mobile.png` });
    await w.$('button[aria-label="Close chat"]').first().tap();
    await w.window.waitFor({ state: "hidden" });
    await context.close();
  });
});
