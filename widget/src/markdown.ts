// Markdown for chat bubbles, rendered safely by construction: the parser yields a small tree of
// known node kinds, and the renderer builds DOM nodes from it with `createElement` and text
// nodes only. No HTML is ever parsed, so `<script>`, `onerror=` or `<svg>` in a message are
// just text; links survive only with an http(s), mailto or tel address.
//
// Supported: paragraphs, line breaks, **bold**, *italic* / _italic_, ~~strike~~, `code`,
// fenced code blocks, "- " and "1. " lists, "> " quotes, "# " headings (shown bold),
// [links](https://…) and bare https:// links.

export type Inline =
  | { t: "text"; v: string }
  | { t: "code"; v: string }
  | { t: "br" }
  | { t: "strong" | "em" | "del"; c: Inline[] }
  | { t: "link"; href: string; c: Inline[] };

export type Block =
  | { t: "p"; c: Inline[] }
  | { t: "heading"; c: Inline[] }
  | { t: "quote"; c: Inline[] }
  | { t: "pre"; v: string }
  | { t: "ul" | "ol"; items: Inline[][] };

const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:", "tel:"]);

/** The address itself when it is absolute and of a safe kind, else null. */
export function safeUrl(raw: string): string | null {
  try {
    const url = new URL(raw.trim());
    return SAFE_PROTOCOLS.has(url.protocol) ? url.href : null;
  } catch {
    return null;
  }
}

const BULLET = /^\s{0,3}[-*+]\s+(.*)$/;
const NUMBERED = /^\s{0,3}\d{1,9}[.)]\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const HEADING = /^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$/;
const FENCE = /^\s{0,3}```/;

export function parse(markdown: string): Block[] {
  const lines = markdown.replace(/\r\n?/g, "\n").split("\n");
  const blocks: Block[] = [];
  let paragraph: string[] = [];
  const flush = () => {
    if (paragraph.length) blocks.push({ t: "p", c: parseInline(paragraph.join("\n")) });
    paragraph = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    let m: RegExpMatchArray | null;
    if (FENCE.test(line)) {
      flush();
      const code: string[] = [];
      for (i++; i < lines.length && !FENCE.test(lines[i]!); i++) code.push(lines[i]!);
      blocks.push({ t: "pre", v: code.join("\n") });
    } else if (!line.trim()) {
      flush();
    } else if ((m = line.match(HEADING))) {
      flush();
      blocks.push({ t: "heading", c: parseInline(m[1]!) });
    } else if (BULLET.test(line) || NUMBERED.test(line)) {
      flush();
      const pattern = BULLET.test(line) ? BULLET : NUMBERED;
      const items: Inline[][] = [];
      for (; i < lines.length && (m = lines[i]!.match(pattern)); i++) items.push(parseInline(m[1]!));
      i--;
      blocks.push({ t: pattern === BULLET ? "ul" : "ol", items });
    } else if (QUOTE.test(line)) {
      flush();
      const quoted: string[] = [];
      for (; i < lines.length && (m = lines[i]!.match(QUOTE)); i++) quoted.push(m[1]!);
      i--;
      blocks.push({ t: "quote", c: parseInline(quoted.join("\n")) });
    } else {
      paragraph.push(line);
    }
  }
  flush();
  return blocks;
}

const AUTOLINK = /^https?:\/\/[^\s<>"]*[^\s<>".,:;!?'")\]]/i;
const WORD = /[\p{L}\p{N}]/u;

/** `inLink`: inside a link's label, where no other link may start (no `<a>` in an `<a>`, no
 * label that shows one address and opens another). */
export function parseInline(text: string, inLink = false): Inline[] {
  const out: Inline[] = [];
  let plain = "";
  const push = (node: Inline) => {
    if (plain) out.push({ t: "text", v: plain });
    plain = "";
    out.push(node);
  };
  let i = 0;
  while (i < text.length) {
    const ch = text[i]!;
    const rest = text.slice(i);
    if (ch === "\\" && i + 1 < text.length && /[\\`*_~[\]()#>!-]/.test(text[i + 1]!)) {
      plain += text[i + 1];
      i += 2;
      continue;
    }
    if (ch === "\n") {
      push({ t: "br" });
      i++;
      continue;
    }
    if (ch === "`") {
      const end = text.indexOf("`", i + 1);
      if (end > i + 1) {
        push({ t: "code", v: text.slice(i + 1, end) });
        i = end + 1;
        continue;
      }
    }
    const delimiter = rest.startsWith("**")
      ? "**"
      : rest.startsWith("__")
        ? "__"
        : rest.startsWith("~~")
          ? "~~"
          : ch === "*" || ch === "_"
            ? ch
            : "";
    if (delimiter && !(ch === "_" && WORD.test(text[i - 1] ?? ""))) {
      const end = closing(text, i + delimiter.length, delimiter);
      if (end > 0) {
        const kind = delimiter === "~~" ? "del" : delimiter.length === 2 ? "strong" : "em";
        push({ t: kind, c: parseInline(text.slice(i + delimiter.length, end), inLink) });
        i = end + delimiter.length;
        continue;
      }
    }
    if (ch === "[" && !inLink) {
      const link = rest.match(/^\[([^\]\n]+)\]\(\s*([^()\s]+)\s*\)/);
      if (link) {
        const href = safeUrl(link[2]!);
        const label = parseInline(link[1]!, true);
        if (href) push({ t: "link", href, c: label });
        else for (const node of label) push(node);
        i += link[0].length;
        continue;
      }
    }
    if ((ch === "h" || ch === "H") && !inLink && !WORD.test(text[i - 1] ?? "")) {
      const auto = rest.match(AUTOLINK);
      const href = auto && safeUrl(auto[0]);
      if (auto && href) {
        push({ t: "link", href, c: [{ t: "text", v: auto[0] }] });
        i += auto[0].length;
        continue;
      }
    }
    plain += ch;
    i++;
  }
  if (plain) out.push({ t: "text", v: plain });
  return out;
}

/** Where `delimiter` closes an emphasis opened just before `from`, or -1. */
function closing(text: string, from: number, delimiter: string): number {
  if (from >= text.length || /\s/.test(text[from]!)) return -1;
  let at = text.indexOf(delimiter, from);
  while (at > 0) {
    const closes = !/\s/.test(text[at - 1]!) && at > from && !(delimiter === "_" && WORD.test(text[at + 1] ?? ""));
    if (closes && !(delimiter.length === 1 && text[at + 1] === delimiter)) return at;
    at = text.indexOf(delimiter, at + delimiter.length);
  }
  return -1;
}

/** The DOM of a message's markdown, built from known elements and text nodes only. */
export function render(markdown: string, doc: Document): DocumentFragment {
  const fragment = doc.createDocumentFragment();
  for (const block of parse(markdown)) fragment.append(renderBlock(block, doc));
  return fragment;
}

function renderBlock(block: Block, doc: Document): Node {
  switch (block.t) {
    case "p":
      return element(doc, "p", block.c);
    case "heading": {
      const p = doc.createElement("p");
      p.append(element(doc, "strong", block.c));
      return p;
    }
    case "quote":
      return element(doc, "blockquote", block.c);
    case "pre": {
      const pre = doc.createElement("pre");
      const code = doc.createElement("code");
      code.textContent = block.v;
      pre.append(code);
      return pre;
    }
    case "ul":
    case "ol": {
      const list = doc.createElement(block.t);
      for (const item of block.items) list.append(element(doc, "li", item));
      return list;
    }
  }
}

function element(doc: Document, tag: string, children: Inline[]): HTMLElement {
  const el = doc.createElement(tag);
  for (const child of children) el.append(renderInline(child, doc));
  return el;
}

function renderInline(node: Inline, doc: Document): Node {
  switch (node.t) {
    case "text":
      return doc.createTextNode(node.v);
    case "br":
      return doc.createElement("br");
    case "code": {
      const code = doc.createElement("code");
      code.textContent = node.v;
      return code;
    }
    case "link": {
      const a = element(doc, "a", node.c) as HTMLAnchorElement;
      a.href = node.href;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      return a;
    }
    default:
      return element(doc, node.t, node.c);
  }
}
