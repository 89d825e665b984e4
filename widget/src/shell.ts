// The widget as the page first loads it: a shadow root with the launcher, its unread badge
// and announcements, the theme, and the open/closed state. The chat window itself is a second
// script (widget-chat.js), loaded when the guest first opens the chat, so the page pays for
// little more than the launcher and the connection until then.

import type { ChatClient } from "./client";
import type { WidgetConfig } from "./config";
import { ICON_CHAT, ICON_CLOSE, adoptStyles, h, icon } from "./dom";
import css from "./launcher.css";
import { type ChatWindowApi, FACTORY, type ShellApi, type WindowFactory } from "./shell-api";
import { INK, WHITE, contrast, parseColor, textOn } from "./theme";

/** Read receipts wait this long, so that a burst of messages is acknowledged once. */
const SEEN_DELAY_MS = 150;

export class Shell implements ShellApi {
  readonly host: HTMLElement;
  readonly shadow: ShadowRoot;
  readonly root: HTMLElement;
  readonly launcher: HTMLButtonElement;
  private readonly badge: HTMLElement;
  private readonly announcer: HTMLElement;
  private view: ChatWindowApi | null = null;
  private loading: Promise<ChatWindowApi> | null = null;
  private open = false;
  private seenTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly shown = new Set<string>();

  constructor(
    readonly config: WidgetConfig,
    readonly client: ChatClient,
    /** Where widget-chat.js is. */
    private readonly windowScript: string,
    private readonly onToggle: (open: boolean) => void,
  ) {
    this.host = h("div", { "data-jack-chat": "", class: config.position });
    this.shadow = this.host.attachShadow({ mode: "open" });
    adoptStyles(this.shadow, css, config.nonce);
    this.launcher = h("button", {
      type: "button",
      class: "launcher",
      "aria-expanded": "false",
      "aria-controls": "jack-window",
    });
    this.badge = h("span", { class: "badge", "aria-hidden": "true", hidden: true });
    this.launcher.append(icon(ICON_CHAT), this.badge);
    this.launcher.addEventListener("click", () => this.setOpen(!this.open));
    // Outside the window: it speaks while the window is closed.
    this.announcer = h("div", { class: "sr", role: "status" });
    this.root = h("div", { class: "root", "data-link": client.link }, this.launcher, this.announcer);
    this.shadow.append(this.root);
    this.label();

    client.changes.on("entry", (entry) => {
      if (!this.shown.has(entry.key)) {
        this.shown.add(entry.key);
        if (entry.role !== "guest" && entry.seq !== undefined) this.announce(entry.role);
      }
      this.label();
    });
    client.changes.on("reset", () => this.label());
    client.changes.on("seen", () => this.label());
    client.changes.on("link", (link) => {
      this.root.dataset.link = link;
      // Back online: what the guest sees now can be reported read.
      if (link === "online") this.seen(true);
    });
  }

  /** Puts the widget on the page: one element at the end of `<body>`, nothing else touched. */
  attach(parent: HTMLElement): void {
    parent.append(this.host);
    this.applyTheme();
  }

  isOpen(): boolean {
    return this.open;
  }

  close(): void {
    this.setOpen(false);
  }

  async setOpen(open: boolean): Promise<void> {
    if (open === this.open) return;
    if (open && !this.view) {
      try {
        this.view = await this.loadWindow();
      } catch {
        this.loading = null;
        this.launcher.title = "The chat could not be loaded. Try again.";
        this.say("The chat could not be loaded. Try again.");
        return;
      }
    }
    this.open = open;
    this.host.classList.toggle("open", open);
    this.launcher.setAttribute("aria-expanded", String(open));
    this.launcher.replaceChildren(icon(open ? ICON_CLOSE : ICON_CHAT), this.badge);
    this.label();
    if (open) {
      this.view!.opened();
      this.seen(true);
    } else if (this.shadow.activeElement) {
      this.launcher.focus();
    }
    this.onToggle(open);
  }

  seen(now = false): void {
    const mark = () => {
      clearTimeout(this.seenTimer);
      this.seenTimer = undefined;
      if (this.open && document.visibilityState === "visible") this.client.markSeen();
    };
    if (now) mark();
    else if (this.seenTimer === undefined) this.seenTimer = setTimeout(mark, SEEN_DELAY_MS);
  }

  /** Loads widget-chat.js once (with the page's nonce, for a strict CSP) and builds the window. */
  private loadWindow(): Promise<ChatWindowApi> {
    this.loading ??= new Promise<WindowFactory>((resolve, reject) => {
      const ready = (window as unknown as Record<string, WindowFactory | undefined>)[FACTORY];
      if (ready) return resolve(ready);
      const script = document.createElement("script");
      script.src = this.windowScript;
      script.async = true;
      if (this.config.nonce) script.nonce = this.config.nonce;
      script.onload = () => {
        const factory = (window as unknown as Record<string, WindowFactory | undefined>)[FACTORY];
        if (factory) resolve(factory);
        else reject(new Error("widget-chat.js did not register"));
      };
      script.onerror = () => {
        script.remove();
        reject(new Error("widget-chat.js could not be loaded"));
      };
      document.head.append(script);
    }).then((factory) => factory(this));
    return this.loading;
  }

  private announce(role: string): void {
    if (this.open) return;
    const unread = this.client.unread();
    this.say(
      `New message from ${role === "staff" ? "hotel staff" : this.config.botName}${unread > 1 ? ` (${unread} unread)` : ""}`,
    );
  }

  private say(text: string): void {
    // Cleared first, so the same words are announced again.
    this.announcer.textContent = "";
    setTimeout(() => (this.announcer.textContent = text), 50);
  }

  private label(): void {
    const unread = this.open ? 0 : this.client.unread();
    this.badge.hidden = unread === 0;
    this.badge.textContent = unread > 99 ? "99+" : String(unread);
    const base = this.open ? "Close chat" : `Chat with ${this.config.botName}`;
    this.launcher.setAttribute("aria-label", unread ? `${base} (${unread} unread)` : base);
  }

  private applyTheme(): void {
    const style = this.root.style;
    if (this.config.fontFamily) style.setProperty("--font", this.config.fontFamily);
    const primary = this.config.primaryColor;
    if (!primary) return;
    style.setProperty("--p", primary);
    // Whatever the page wrote (a name, hsl(), …), the computed value is rgb(): read it back.
    const rgb = parseColor(getComputedStyle(this.launcher).backgroundColor) ?? parseColor(primary);
    if (!rgb) return;
    style.setProperty("--on-p", textOn(rgb));
    style.setProperty("--p-ink", contrast(rgb, WHITE) >= 4.5 ? primary : `rgb(${INK.join(",")})`);
  }
}
