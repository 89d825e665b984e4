// What the browser tests stand on: a real stack (started by the caller, see
// tests/e2e/tests/widget.rs; or `jack up` for a developer), Debian's Chromium driven by
// playwright-core, a TCP proxy in front of the edge that can cut the guest's connection like
// a dropped Wi-Fi, and a gRPC client of ConversationService speaking as the butler.
//
//   JACK_URL                  the edge, e.g. http://127.0.0.1:3001 (required)
//   JACK_CONVERSATION_ADDR    ConversationService, e.g. 127.0.0.1:50052 (default)
//   JACK_RESPONDER_TOKEN      a responder's gRPC token (default: read from
//                             JACK_RESPONDER_TOKEN_FILE, else data/credentials/responder.token,
//                             which `jack up` makes)
//   CHROMIUM                  the browser (default /usr/bin/chromium)
//   JACK_SCREENSHOTS          where screenshots go (default: a temporary folder)
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import net from "node:net";
import http from "node:http";
import zlib from "node:zlib";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

export const EDGE = process.env.JACK_URL?.replace(/\/$/, "");
if (!EDGE) throw new Error("set JACK_URL to the edge under test (e.g. http://127.0.0.1:3001 from `jack up`)");
const CONVERSATION = process.env.JACK_CONVERSATION_ADDR ?? "127.0.0.1:50052";
const RESPONDER_TOKEN = () =>
  (
    process.env.JACK_RESPONDER_TOKEN ??
    readFileSync(process.env.JACK_RESPONDER_TOKEN_FILE ?? "../data/credentials/responder.token", "utf8")
  ).trim();
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
/** Where the tests save their screenshots: a temporary folder, so that a test run leaves the
 * checkout as it was; `JACK_SCREENSHOTS=$PWD/widget/screenshots` refreshes the README's. */
export const SCREENSHOTS = `${process.env.JACK_SCREENSHOTS ?? join(tmpdir(), "jack-widget-screenshots")}/`;
/** How long any awaited thing in the page may take before the test fails. */
export const WAIT = 15_000;

export async function launch() {
  if (!existsSync(CHROMIUM))
    throw new Error(`no browser at ${CHROMIUM}: install Debian's chromium (apt-get install chromium) or set CHROMIUM`);
  mkdirSync(SCREENSHOTS, { recursive: true });
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** A new guest: a fresh browser profile (own localStorage) whose pages fail the test on any
 * JavaScript error or dialog (an XSS that ran would open one). */
export async function guestContext(browser, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, ...options });
  context.setDefaultTimeout(WAIT);
  context.problems = [];
  context.on("page", (page) => watch(page, context.problems));
  return context;
}

function watch(page, problems) {
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("dialog", (dialog) => {
    problems.push(`dialog: ${dialog.message()}`);
    dialog.dismiss().catch(() => {});
  });
  page.on("console", (message) => {
    if (message.type() === "error" && !/WebSocket|ERR_CONNECTION|Failed to load resource/.test(message.text()))
      problems.push(`console: ${message.text()}`);
  });
}

/** The widget's parts (Playwright's CSS selectors pierce its open shadow root). */
export function widget(page) {
  const $ = (selector) => page.locator(`[data-jack-chat] ${selector}`);
  return {
    $,
    launcher: $(".launcher"),
    window: $(".window"),
    input: $("textarea"),
    log: $(".log"),
    typing: $(".typing"),
    chips: $(".chips .chip"),
    badge: $(".badge"),
    messages: $(".log .msg[data-key]"),
    async open() {
      await this.launcher.click();
      await this.window.waitFor({ state: "visible" });
    },
    async online() {
      await page.locator('[data-jack-chat] .root[data-link="online"]').waitFor({ state: "attached" });
    },
    async send(text) {
      await this.input.fill(text);
      await this.input.press("Enter");
    },
    /** From now on, records every time the butler's typing dots appear or go away, with how
     * many butler messages were shown at that moment. Polling could miss dots that show for
     * half a second; the page's own MutationObserver cannot. */
    async watchTyping() {
      await page.evaluate(() => {
        const root = document.querySelector("[data-jack-chat]").shadowRoot;
        const typing = root.querySelector(".typing");
        const seen = (window.__jackTypingSeen = []);
        new MutationObserver(() => {
          const shown = !typing.hidden;
          if ((seen.at(-1)?.shown ?? false) !== shown)
            seen.push({ shown, replies: root.querySelectorAll(".log .msg.assistant[data-key]").length });
        }).observe(typing, { attributes: true, attributeFilter: ["hidden"] });
      });
    },
    /** What `watchTyping` recorded: [{shown, replies}]. */
    typingSeen() {
      return page.evaluate(() => window.__jackTypingSeen);
    },
    /** The guest's own message with this text, once. */
    own(text) {
      return $(`.msg.guest`).filter({ hasText: text });
    },
    /** The butler's messages. */
    replies() {
      return $(".log .msg.assistant[data-key]");
    },
    /** Every message shown, as the page's data says: [{key, messageId, seq, role, text}]. */
    async shown() {
      return page.evaluate(() => {
        const root = document.querySelector("[data-jack-chat]").shadowRoot;
        return [...root.querySelectorAll(".log .msg[data-key]")].map((el) => ({
          key: el.dataset.key,
          messageId: el.dataset.messageId,
          seq: Number(el.dataset.seq),
          role: el.classList.contains("guest") ? "guest" : "butler",
          status: el.dataset.status,
          text: [...el.querySelector(".bubble").childNodes]
            .filter((n) => !n.classList?.contains("sr"))
            .map((n) => n.textContent)
            .join("\n"),
        }));
      });
    },
  };
}

/** A TCP proxy to the edge: `cut()` drops every connection and refuses new ones (the hotel
 * Wi-Fi went away), `restore()` lets them through again. */
export async function proxy() {
  const target = new URL(EDGE);
  const sockets = new Set();
  let cut = false;
  const server = net.createServer((client) => {
    if (cut) return client.destroy();
    const upstream = net.connect(Number(target.port), target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    client.pipe(upstream).pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cut() {
      cut = true;
      for (const s of sockets) s.destroy();
    },
    restore() {
      cut = false;
    },
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(resolve);
      }),
  };
}

/** A static site of our own: pages a hotel might really have (another origin than the edge). */
export async function site(pages) {
  const server = http.createServer((req, res) => {
    const page = pages[new URL(req.url, "http://x").pathname];
    if (!page) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": "text/html; charset=utf-8", ...(page.headers ?? {}) });
    res.end(page.body);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

/** ConversationService, as the AI responder or staff use it. */
export function butler() {
  const proto = fileURLToPath(new URL("../../../proto/", import.meta.url));
  const definition = protoLoader.loadSync("jack/conversation/v1/conversation.proto", {
    includeDirs: [proto],
    keepCase: false,
    longs: Number,
    enums: String,
    defaults: false,
  });
  const { ConversationService } = grpc.loadPackageDefinition(definition).jack.conversation.v1;
  const client = new ConversationService(CONVERSATION, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${RESPONDER_TOKEN()}`);
  const call = (method, request) =>
    new Promise((resolve, reject) =>
      client[method](request, metadata, { deadline: Date.now() + WAIT }, (error, response) =>
        error ? reject(error) : resolve(response),
      ),
    );
  return {
    say: (conversationId, content, extra = {}) =>
      call("sendMessage", { conversationId, role: "ROLE_ASSISTANT", content, ...extra }),
    typing: (conversationId, isTyping) => call("setTyping", { conversationId, role: "ROLE_ASSISTANT", isTyping }),
    list: (conversationId) => call("listMessages", { conversationId, afterSeq: 0, limit: 500 }),
    close: () => client.close(),
  };
}

/** Listens, in every page of the context, to the SDK from the moment the widget script
 * defines `window.JackChat` (as a hotel's own script would): each event in `names` is
 * recorded in `window.__events` as [name, data], and the latest `connected` event is
 * `window.__jack`. */
export async function recordSdkEvents(context, names = []) {
  await context.addInitScript((names) => {
    window.__events = [];
    let sdk;
    Object.defineProperty(window, "JackChat", {
      configurable: true,
      get: () => sdk,
      set: (value) => {
        sdk = value;
        value.on("connected", (event) => (window.__jack = event));
        for (const name of names) value.on(name, (data) => window.__events.push([name, data ?? null]));
      },
    });
  }, names);
}

/** Records the SDK's `connected` event as `window.__jack` (see `recordSdkEvents`). */
export async function recordConnected(context) {
  await recordSdkEvents(context);
}

/** The conversation the page's widget is in. */
export async function conversationOf(page) {
  await page.waitForFunction(() => window.__jack?.conversationId);
  return page.evaluate(() => window.__jack.conversationId);
}

/** A real PNG of `width`×`height` (a colour gradient), made here so no file is committed. */
export function png(width, height) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (bytes) => {
    let c = 0xffffffff;
    for (const b of bytes) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(crc(body), 8 + data.length);
    return out;
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8);
  const rows = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++)
      rows.set([(x * 255) / width, 90, (y * 255) / height], y * (width * 3 + 1) + 1 + x * 3);
  }
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([
    signature,
    chunk("IHDR", header),
    chunk("IDAT", zlib.deflateSync(rows)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}
