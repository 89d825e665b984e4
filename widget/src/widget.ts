// The chat window, in the widget's shadow root next to the launcher, drawn from the
// `ChatClient`'s changes. It is the lazy bundle (widget-chat.js, entry `chat.ts`): the page
// loads it when the guest first opens the chat. Keyboard: Tab moves through the controls in
// reading order, Enter sends (Shift+Enter is a new line), Escape closes and gives focus back
// to the launcher.

import type { ChatClient } from "./client";
import type { WidgetConfig } from "./config";
import { ICON_ATTACH, ICON_CLOSE, ICON_SEND, adoptStyles, h, icon } from "./dom";
import { type Files, quickReplies, renderEntry, updateEntry } from "./messages";
import type { Role } from "./protocol";
import type { ChatWindowApi, ShellApi } from "./shell-api";
import type { Entry } from "./timeline";
import { DEFAULT_TYPES, DownloadUrls, Upload, formatSize, refuseFile } from "./uploads";
import css from "./widget.css";

/** The butler's dots go away by themselves if the "stopped typing" never comes. */
const TYPING_TIMEOUT_MS = 15_000;
/** A short blip is not worth a banner. */
const BANNER_DELAY_MS = 1_500;

export class ChatWindow implements ChatWindowApi {
  private readonly config: WidgetConfig;
  private readonly client: ChatClient;
  private readonly window: HTMLElement;
  private readonly state: HTMLElement;
  private readonly banner: HTMLElement;
  private readonly log: HTMLElement;
  private readonly more: HTMLButtonElement;
  private readonly greeting: HTMLElement | null;
  private readonly typing: HTMLElement;
  private chips: HTMLElement;
  private readonly notice: HTMLElement;
  private readonly input: HTMLTextAreaElement;
  private readonly nodes = new Map<string, HTMLElement>();
  private readonly files: Files;
  private readonly tray: HTMLElement;
  private readonly picker: HTMLInputElement;
  private typingTimer: ReturnType<typeof setTimeout> | undefined;
  private bannerTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly shell: ShellApi) {
    const { config, client } = shell;
    this.config = config;
    this.client = client;
    const name = config.botName;
    adoptStyles(shell.shadow, css, config.nonce);

    const close = h("button", { type: "button", class: "icon-btn", "aria-label": "Close chat" }, icon(ICON_CLOSE));
    close.addEventListener("click", () => shell.close());
    this.state = h("span", { class: "state off" }, "Connecting…");
    const header = h(
      "div",
      { class: "header" },
      h("div", { class: "avatar", "aria-hidden": "true" }, name.slice(0, 1).toUpperCase()),
      h("div", { class: "title" }, h("strong", { id: "jack-title" }, name), this.state),
      close,
    );
    this.banner = h("div", { class: "banner", role: "status", hidden: true });
    this.more = h("button", { type: "button", class: "more", hidden: true }, "Show earlier messages");
    this.more.addEventListener("click", () => this.client.loadOlder());
    this.greeting = config.greeting
      ? h("div", { class: "msg assistant greeting" }, h("div", { class: "bubble" }, config.greeting))
      : null;
    this.log = h(
      "div",
      {
        class: "log",
        role: "log",
        "aria-live": "polite",
        "aria-relevant": "additions",
        "aria-label": "Conversation",
        tabindex: "0",
      },
      this.more,
      this.greeting,
    );
    this.log.addEventListener(
      "scroll",
      () => {
        if (this.log.scrollTop < 40) this.client.loadOlder();
        shell.seen();
      },
      { passive: true },
    );
    this.typing = h(
      "div",
      { class: "typing", role: "status", hidden: true },
      h("span", { class: "sr" }, `${name} is typing`),
      h("span", { class: "dot" }),
      h("span", { class: "dot" }),
      h("span", { class: "dot" }),
    );
    this.chips = h("div", { hidden: true });
    this.notice = h("div", { class: "notice", role: "alert", hidden: true });
    this.input = h("textarea", {
      rows: "1",
      placeholder: config.placeholder,
      "aria-label": "Message",
      maxlength: "20000",
      enterkeyhint: "send",
    });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      }
    });
    this.input.addEventListener("input", () => {
      this.notice.hidden = true;
      this.client.typing(this.input.value.length > 0);
      this.input.style.height = "auto";
      this.input.style.height = `${Math.min(this.input.scrollHeight + 2, 120)}px`;
    });
    const send = h("button", { type: "submit", class: "send", "aria-label": "Send message" }, icon(ICON_SEND));
    this.files = { downloads: new DownloadUrls(config.apiUrl, () => client.visitorToken()), previews: new Map() };
    this.picker = h("input", {
      type: "file",
      accept: DEFAULT_TYPES.join(","),
      multiple: true,
      hidden: true,
      tabindex: "-1",
      "aria-label": "Choose files to send",
    });
    this.picker.addEventListener("change", () => {
      this.sendFiles([...(this.picker.files ?? [])]);
      this.picker.value = "";
    });
    const attach = h(
      "button",
      { type: "button", class: "attach", "aria-label": "Attach a photo or PDF" },
      icon(ICON_ATTACH),
    );
    attach.addEventListener("click", () => this.picker.click());
    this.input.addEventListener("paste", (event) => {
      const pasted = [...(event.clipboardData?.files ?? [])];
      if (pasted.length) {
        event.preventDefault();
        this.sendFiles(pasted);
      }
    });
    this.tray = h("div", { class: "uploads", "aria-label": "Files being sent" });
    const form = h("form", { class: "composer" }, attach, this.picker, this.input, send);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.window = h(
      "div",
      { class: "window", id: "jack-window", role: "dialog", "aria-labelledby": "jack-title" },
      header,
      this.banner,
      this.log,
      this.typing,
      this.chips,
      this.notice,
      this.tray,
      form,
    );
    // Files dropped anywhere on the chat window are sent.
    this.window.addEventListener("dragover", (event) => {
      if (event.dataTransfer?.types.includes("Files")) {
        event.preventDefault();
        this.window.classList.add("dropping");
      }
    });
    this.window.addEventListener("dragleave", () => this.window.classList.remove("dropping"));
    this.window.addEventListener("drop", (event) => {
      event.preventDefault();
      this.window.classList.remove("dropping");
      this.sendFiles([...(event.dataTransfer?.files ?? [])]);
    });
    this.window.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !event.isComposing) {
        event.stopPropagation();
        shell.close();
      }
    });
    shell.root.insertBefore(this.window, shell.launcher);

    client.changes.on("entry", (entry) => this.draw(entry));
    client.changes.on("reset", () => this.redraw());
    client.changes.on("link", () => this.link());
    client.changes.on("typing", ({ isTyping, role }) => this.showTyping(isTyping, role));
    client.changes.on("more", (more) => (this.more.hidden = !more));
    this.more.hidden = !client.more;
    this.link();
    for (const entry of client.timeline.entries) this.draw(entry);
  }

  opened(): void {
    this.picker.accept = this.allowedTypes().join(",");
    this.scrollToEnd();
    this.input.focus();
  }

  /** What the upload service accepts, as the edge said on connecting (else the defaults). */
  private allowedTypes(): string[] {
    return this.client.limits.allowedFileTypes ?? DEFAULT_TYPES;
  }

  /** Shows a problem under the composer (for the guest) and to screen readers. */
  showNotice(text: string): void {
    this.notice.textContent = text;
    this.notice.hidden = false;
  }

  /** Checks each file (type, size) with a clear message, then uploads it with a progress
   * bar, cancel and retry; once stored it is sent as a message like any other. */
  private sendFiles(files: File[]): void {
    for (const file of files) {
      const refusal = refuseFile(file, this.client.limits.maxFileSize, this.allowedTypes());
      if (refusal) {
        this.showNotice(refusal);
        continue;
      }
      const bar = h("progress", { max: "1", value: "0", "aria-label": `Uploading ${file.name}` });
      const status = h("span", { class: "up-status", role: "status" }, formatSize(file.size));
      const cancel = h(
        "button",
        { type: "button", class: "link-btn", "aria-label": `Cancel sending ${file.name}` },
        "Cancel",
      );
      const retry = h(
        "button",
        { type: "button", class: "link-btn", hidden: true, "aria-label": `Retry sending ${file.name}` },
        "Retry",
      );
      const row = h(
        "div",
        { class: "upload" },
        h("span", { class: "file-name" }, file.name),
        bar,
        status,
        cancel,
        retry,
      );
      this.tray.append(row);
      const upload = new Upload(
        file,
        this.config.apiUrl,
        () => this.client.visitorToken(),
        (u) => {
          bar.value = u.progress;
          row.dataset.state = u.state;
          retry.hidden = u.state !== "failed";
          cancel.textContent = u.state === "failed" ? "Remove" : "Cancel";
          status.textContent =
            u.state === "failed" ? u.error : u.state === "uploading" ? `${Math.round(u.progress * 100)}%` : "";
          if (u.state === "done" && u.attachment) {
            if (file.type.startsWith("image/")) this.files.previews.set(u.attachment.id, URL.createObjectURL(file));
            this.client.sendAttachments([u.attachment]);
            row.remove();
          } else if (u.state === "cancelled") {
            row.remove();
          }
        },
      );
      cancel.addEventListener("click", () => {
        upload.cancel();
        this.input.focus();
      });
      retry.addEventListener("click", () => void upload.start());
      void upload.start();
    }
  }

  private submit(): void {
    const text = this.input.value;
    if (!text.trim()) return;
    try {
      this.client.sendText(text);
    } catch (error) {
      // A ChatError (checked by its code: this bundle does not share the client's classes).
      const code = (error as { code?: string }).code;
      if (!code) throw error;
      this.showNotice(
        code === "MESSAGE_TOO_LARGE"
          ? `That message is too long (at most ${this.client.limits.maxMessageSize} characters). Please shorten it.`
          : (error as Error).message,
      );
      return;
    }
    this.input.value = "";
    this.input.style.height = "";
    this.notice.hidden = true;
  }

  /** Puts an entry's node where the timeline says it goes, and keeps the view's extras right. */
  private draw(entry: Entry): void {
    let node = this.nodes.get(entry.key);
    const fresh = !node;
    if (!node) {
      node = renderEntry(entry, this.client, this.config.botName, this.files);
      this.nodes.set(entry.key, node);
    }
    updateEntry(node, entry, this.client, this.files);
    const entries = this.client.timeline.entries;
    const next = entries[entries.indexOf(entry) + 1];
    const anchor = (next && this.nodes.get(next.key)) ?? null;
    const atEnd = this.nearEnd();
    if (node.nextSibling !== anchor || fresh) {
      const above = anchor !== null && !atEnd;
      const height = this.log.scrollHeight;
      this.log.insertBefore(node, anchor);
      // An older page landing above what the guest reads must not push it away.
      if (above) this.log.scrollTop += this.log.scrollHeight - height;
    }
    if (this.greeting) this.greeting.hidden = this.client.more;
    this.drawChips();
    if (atEnd || (fresh && entry.role === "guest" && !next)) this.scrollToEnd();
    this.shell.seen();
  }

  private redraw(): void {
    for (const node of this.nodes.values()) node.remove();
    this.nodes.clear();
    for (const entry of this.client.timeline.entries) this.draw(entry);
    this.drawChips();
  }

  /** Quick replies belong to the latest message only, until the guest answers. */
  private drawChips(): void {
    const entries = this.client.timeline.entries;
    const last = entries[entries.length - 1];
    const replies = last && last.role !== "guest" ? last.message?.quickReplies : undefined;
    const key = replies?.length ? last!.key : "";
    if (this.chips.dataset.for === key) return;
    const chips = replies?.length ? quickReplies(replies, last!.message!, this.client) : h("div", { hidden: true });
    chips.dataset.for = key;
    // A tapped chip goes away with the others: keep the keyboard in the chat, at the input.
    const hadFocus = this.chips.contains(this.shell.shadow.activeElement);
    this.chips.replaceWith(chips);
    this.chips = chips;
    if (hadFocus) this.input.focus();
  }

  private showTyping(isTyping: boolean, role: Role): void {
    clearTimeout(this.typingTimer);
    this.typing.hidden = !isTyping;
    this.typing.dataset.role = role;
    if (isTyping) {
      const atEnd = this.nearEnd();
      this.typingTimer = setTimeout(() => (this.typing.hidden = true), TYPING_TIMEOUT_MS);
      if (atEnd) this.scrollToEnd();
    }
  }

  private link(): void {
    const link = this.client.link;
    const online = link === "online";
    this.state.textContent = online ? "Online" : link === "stopped" ? "Unavailable" : "Connecting…";
    this.state.classList.toggle("off", !online);
    clearTimeout(this.bannerTimer);
    if (online) {
      this.banner.hidden = true;
      return;
    }
    const text =
      link === "stopped"
        ? "Chat is not available on this page right now."
        : "Reconnecting… Your messages will be sent as soon as the connection is back.";
    this.bannerTimer = setTimeout(
      () => {
        this.banner.textContent = text;
        this.banner.hidden = false;
      },
      link === "stopped" ? 0 : BANNER_DELAY_MS,
    );
  }

  private nearEnd(): boolean {
    return this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 60;
  }

  private scrollToEnd(): void {
    this.log.scrollTop = this.log.scrollHeight;
  }
}
