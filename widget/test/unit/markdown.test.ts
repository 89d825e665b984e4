import assert from "node:assert/strict";
import { test } from "node:test";

import { type Inline, parse, parseInline, safeUrl } from "../../src/markdown";

const text = (nodes: Inline[]): string => nodes.map((n) => ("v" in n ? n.v : n.t === "br" ? "\n" : text(n.c))).join("");
const links = (nodes: Inline[]): string[] =>
  nodes.flatMap((n) => (n.t === "link" ? [n.href] : "c" in n ? links(n.c) : []));

test("inline emphasis, code and links", () => {
  assert.deepEqual(parseInline("**towels** now"), [
    { t: "strong", c: [{ t: "text", v: "towels" }] },
    { t: "text", v: " now" },
  ]);
  assert.deepEqual(parseInline("an *extra* pillow"), [
    { t: "text", v: "an " },
    { t: "em", c: [{ t: "text", v: "extra" }] },
    { t: "text", v: " pillow" },
  ]);
  assert.deepEqual(parseInline("`room_service`"), [{ t: "code", v: "room_service" }]);
  assert.deepEqual(parseInline("~~old~~"), [{ t: "del", c: [{ t: "text", v: "old" }] }]);
  assert.deepEqual(links(parseInline("see [the menu](https://hotel.example/menu) or https://hotel.example/spa.")), [
    "https://hotel.example/menu",
    "https://hotel.example/spa",
  ]);
  assert.equal(
    text(parseInline("snake_case_name and 2 * 3 * 4")),
    "snake_case_name and 2 * 3 * 4",
    "no emphasis inside words or around spaces",
  );
  assert.equal(text(parseInline("\\*not bold\\*")), "*not bold*");
});

test("blocks: paragraphs, lists, quotes, headings and code", () => {
  const blocks = parse(
    "# Spa\n\nOpen **daily**:\n- 9 am\n- 9 pm\n\n1. book\n2. relax\n\n> quiet please\n\n```\n<b>raw</b>\n```",
  );
  assert.deepEqual(
    blocks.map((b) => b.t),
    ["heading", "p", "ul", "ol", "quote", "pre"],
  );
  assert.equal(blocks[5]!.t === "pre" && blocks[5]!.v, "<b>raw</b>");
  const p = blocks[1]!;
  assert.ok(p.t === "p" && p.c.some((n) => n.t === "strong"));
});

test("only http(s), mailto and tel links survive", () => {
  for (const bad of [
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "java\tscript:alert(1)",
    " javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:x",
    "/relative",
    "file:///etc/passwd",
  ]) {
    assert.equal(safeUrl(bad), null, bad);
    assert.deepEqual(links(parseInline(`[click](${bad})`)), [], bad);
  }
  assert.equal(safeUrl("https://hotel.example/a b"), "https://hotel.example/a%20b");
  assert.equal(safeUrl("mailto:desk@hotel.example"), "mailto:desk@hotel.example");
});

test("HTML in a message is text, never markup", () => {
  const corpus = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)>",
    '<a href="javascript:alert(1)">x</a>',
  ];
  for (const html of corpus) {
    const blocks = parse(html);
    assert.equal(blocks.length, 1);
    const p = blocks[0]!;
    assert.ok(p.t === "p");
    assert.equal(text(p.c), html, "the whole input is kept as text");
    assert.deepEqual(links(p.c), []);
  }
});

test("a link label cannot hold another link", () => {
  const nodes = parseInline("[https://bank.example](https://evil.example)");
  assert.deepEqual(links(nodes), ["https://evil.example/"], "one link, to where it really goes");
  assert.equal(text(nodes), "https://bank.example");
});
