// One message of the log: the bubble (markdown), its rich parts (buttons, a card carousel) and,
// for the guest's own, where it is (sending, sent, read, failed with a retry).

import type { ChatClient } from "./client";
import { h } from "./dom";
import { render, safeUrl } from "./markdown";
import { type DownloadUrls, formatSize } from "./uploads";
import type { Attachment, Button, Card, ChatMessage, QuickReply } from "./protocol";
import type { Entry } from "./timeline";

const STATUS_TEXT: Record<string, string> = {
  queued: "Waiting for connection…",
  sending: "Sending…",
  sent: "Sent",
  read: "Read",
  failed: "Not sent.",
};

/** What drawing attachments needs: their download URLs, and local previews of the guest's
 * own files while they are not stored yet. */
export interface Files {
  downloads: DownloadUrls;
  previews: Map<string, string>;
}

export function renderEntry(entry: Entry, client: ChatClient, botName: string, files: Files): HTMLElement {
  const message = entry.message;
  const el = h("div", { class: `msg ${entry.role}`, "data-key": entry.key });
  const who = entry.role === "guest" ? "You" : entry.role === "staff" ? "Hotel staff" : botName;
  const attachments = message?.attachments ?? (entry.frame?.type === "message" ? entry.frame.attachments : undefined);
  if (entry.content || !attachments?.length) {
    const bubble = h("div", { class: "bubble" }, h("span", { class: "sr" }, `${who}: `));
    bubble.append(render(entry.content, document));
    el.append(bubble);
  }
  if (attachments?.length) el.append(attachmentList(attachments, files, entry.messageId !== undefined));
  if (message?.buttons?.length) el.append(buttons(message.buttons, message, client));
  if (message?.cards?.length) {
    el.classList.add("has-cards");
    el.append(carousel(message.cards, message, client));
  }
  el.append(meta(entry, client));
  return el;
}

/** Files as the guest sees them: images as previews that open the full file, anything else
 * as a named chip that downloads it. Links are filled in once the file is stored. */
function attachmentList(attachments: Attachment[], files: Files, stored: boolean): HTMLElement {
  const box = h("div", { class: "files" });
  for (const a of attachments) {
    if (a.url && a.expiresAt)
      files.downloads.remember({
        attachmentId: a.id,
        url: a.url,
        thumbnailUrl: a.thumbnailUrl,
        expiresAt: a.expiresAt,
      });
    const name = a.filename ?? "Attachment";
    const image = (a.contentType ?? "").startsWith("image/");
    const link = h("a", {
      class: image ? "file-img" : "file",
      target: "_blank",
      rel: "noopener noreferrer",
      "data-attachment-id": a.id,
      "aria-label": `${name}${a.size ? `, ${formatSize(a.size)}` : ""}`,
    });
    if (image) {
      const img = h("img", { alt: name });
      const local = files.previews.get(a.id);
      if (local) img.src = local;
      link.append(img);
    } else {
      link.append(h("span", { class: "file-name" }, name));
      if (a.size) link.append(h("span", { class: "file-size" }, formatSize(a.size)));
    }
    box.append(link);
  }
  if (stored) fillLinks(box, files);
  return box;
}

function fillLinks(box: HTMLElement, files: Files): void {
  for (const link of box.querySelectorAll<HTMLAnchorElement>("a[data-attachment-id]:not([href])")) {
    void files.downloads.get(link.dataset.attachmentId!).then((d) => {
      if (!d) return;
      link.href = d.url;
      const img = link.querySelector("img");
      if (img && d.thumbnailUrl && !img.getAttribute("src")?.startsWith("blob:")) img.src = d.thumbnailUrl;
    });
  }
}

/** Refreshes the parts of an entry that change after it is shown: its key data and its status. */
export function updateEntry(el: HTMLElement, entry: Entry, client: ChatClient, files: Files): void {
  const box = el.querySelector<HTMLElement>(".files");
  if (box && entry.messageId) fillLinks(box, files);
  el.dataset.status = entry.status ?? "";
  if (entry.messageId) el.dataset.messageId = entry.messageId;
  if (entry.seq !== undefined) el.dataset.seq = String(entry.seq);
  el.classList.toggle("failed", entry.status === "failed");
  el.querySelector(".meta")?.replaceWith(meta(entry, client));
}

function meta(entry: Entry, client: ChatClient): HTMLElement {
  const time = entry.timestamp ? new Date(entry.timestamp) : null;
  const clock =
    time && !Number.isNaN(time.getTime()) ? time.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
  const el = h("div", { class: "meta" }, clock && h("time", { datetime: entry.timestamp }, clock));
  if (entry.role === "guest" && entry.status) {
    el.append(h("span", { class: "status" }, STATUS_TEXT[entry.status]));
    if (entry.status === "failed") {
      const retry = h(
        "button",
        { type: "button", class: "link-btn", "aria-label": `Retry sending: ${entry.content.slice(0, 60)}` },
        "Retry",
      );
      retry.addEventListener("click", () => {
        // The status (and this button) is redrawn: keep the keyboard in the chat.
        el.closest(".window")?.querySelector("textarea")?.focus();
        client.retry(entry.clientMessageId!);
      });
      el.append(retry);
      if (entry.error) el.title = entry.error;
    }
  }
  return el;
}

function buttons(list: Button[], message: ChatMessage, client: ChatClient): HTMLElement {
  const box = h("div", { class: "actions" });
  for (const button of list) {
    const el = actionButton(button, message, client);
    if (el) box.append(el);
  }
  return box;
}

/** A postback button sends a postback; a url button is a real link in a new tab (http(s) only). */
function actionButton(button: Button, message: ChatMessage, client: ChatClient): HTMLElement | null {
  if (button.type === "url") {
    const href = safeUrl(button.url);
    if (!href || !/^https?:/.test(href)) return null;
    return h("a", { class: "btn", href, target: "_blank", rel: "noopener noreferrer" }, button.label);
  }
  if (button.type === "postback" && typeof button.payload === "string") {
    const el = h("button", { type: "button", class: "btn" }, button.label);
    el.addEventListener("click", () => client.sendPostback(button.label, button.payload, message.messageId));
    return el;
  }
  return null;
}

/** A horizontally scrolling row of cards: touch and trackpad scroll it natively, the arrow keys
 * scroll it when it has focus, and the previous/next buttons move one card at a time. */
function carousel(cards: Card[], message: ChatMessage, client: ChatClient): HTMLElement {
  const track = h("div", { class: "carousel", role: "region", "aria-label": `${cards.length} options`, tabindex: "0" });
  cards.forEach((card, i) => {
    const image = card.imageUrl && safeUrl(card.imageUrl);
    const body = h(
      "div",
      { class: "card-body" },
      h("span", { class: "card-title" }, card.title),
      card.subtitle && h("span", { class: "card-sub" }, card.subtitle),
    );
    if (card.buttons?.length) body.append(buttons(card.buttons, message, client));
    track.append(
      h(
        "article",
        { class: "card", "aria-label": `${card.title} (${i + 1} of ${cards.length})` },
        image && /^https?:/.test(image)
          ? h("img", { src: image, alt: card.title, loading: "lazy", referrerpolicy: "no-referrer" })
          : null,
        body,
      ),
    );
  });
  const step = (direction: number) => () => track.scrollBy({ left: direction * 230, behavior: "smooth" });
  const prev = h("button", { type: "button", class: "nav prev", "aria-label": "Previous option" }, "‹");
  const next = h("button", { type: "button", class: "nav next", "aria-label": "Next option" }, "›");
  prev.addEventListener("click", step(-1));
  next.addEventListener("click", step(1));
  track.addEventListener("keydown", (event) => {
    if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
      event.preventDefault();
      step(event.key === "ArrowRight" ? 1 : -1)();
    }
  });
  const sync = () => {
    prev.hidden = track.scrollLeft <= 2;
    next.hidden = track.scrollLeft + track.clientWidth >= track.scrollWidth - 2;
  };
  track.addEventListener("scroll", sync, { passive: true });
  // Drawn while the window is closed, the track has no size yet: follow it when it gets one.
  if (typeof ResizeObserver === "function") new ResizeObserver(sync).observe(track);
  else requestAnimationFrame(sync);
  return h("div", { class: "carousel-wrap" }, prev, track, next);
}

/** Quick replies under the latest message: a tap sends it and they go away. */
export function quickReplies(list: QuickReply[], message: ChatMessage, client: ChatClient): HTMLElement {
  const box = h("div", { class: "chips", role: "group", "aria-label": "Suggested replies" });
  for (const reply of list) {
    const chip = h("button", { type: "button", class: "chip" }, reply.label);
    chip.addEventListener("click", () => client.sendPostback(reply.label, reply.payload, message.messageId));
    box.append(chip);
  }
  return box;
}
