// The widget on the page: a launcher and a chat window inside a shadow root, drawn from the
// `ChatClient`'s changes. Keyboard: Tab moves through the controls in reading order, Enter
// sends (Shift+Enter is a new line), Escape closes and gives focus back to the launcher.

import { ChatError, type ChatClient } from './client';
import type { WidgetConfig } from './config';
import { ICON_CHAT, ICON_CLOSE, ICON_SEND, h, icon } from './dom';
import { quickReplies, renderEntry, updateEntry } from './messages';
import type { Role } from './protocol';
import { INK, WHITE, contrast, parseColor, textOn } from './theme';
import type { Entry } from './timeline';
import css from './widget.css';

/** The butler's dots go away by themselves if the "stopped typing" never comes. */
const TYPING_TIMEOUT_MS = 15_000;
/** Read receipts wait this long, so that a burst of messages is acknowledged once. */
const SEEN_DELAY_MS = 150;
/** A short blip is not worth a banner. */
const BANNER_DELAY_MS = 1_500;

export class WidgetView {
  readonly host: HTMLElement;
  private readonly root: HTMLElement;
  private readonly window: HTMLElement;
  private readonly launcher: HTMLButtonElement;
  private readonly badge: HTMLElement;
  private readonly state: HTMLElement;
  private readonly banner: HTMLElement;
  private readonly log: HTMLElement;
  private readonly more: HTMLButtonElement;
  private readonly greeting: HTMLElement | null;
  private readonly typing: HTMLElement;
  private chips: HTMLElement;
  private readonly notice: HTMLElement;
  private readonly input: HTMLTextAreaElement;
  private readonly announcer: HTMLElement;
  private readonly nodes = new Map<string, HTMLElement>();
  private typingTimer: ReturnType<typeof setTimeout> | undefined;
  private bannerTimer: ReturnType<typeof setTimeout> | undefined;
  private seenTimer: ReturnType<typeof setTimeout> | undefined;
  isOpen = false;

  constructor(
    private readonly config: WidgetConfig,
    private readonly client: ChatClient,
    private readonly onToggle: (open: boolean) => void,
  ) {
    const name = config.botName;
    this.host = h('div', { 'data-jack-chat': '', class: config.position });
    const shadow = this.host.attachShadow({ mode: 'open' });
    adoptStyles(shadow, css, config.nonce);

    this.launcher = h('button', { type: 'button', class: 'launcher', 'aria-expanded': 'false', 'aria-controls': 'jack-window' });
    this.badge = h('span', { class: 'badge', 'aria-hidden': 'true', hidden: true });
    this.launcher.append(icon(ICON_CHAT), this.badge);
    this.launcher.addEventListener('click', () => this.setOpen(!this.isOpen));

    const close = h('button', { type: 'button', class: 'icon-btn', 'aria-label': 'Close chat' }, icon(ICON_CLOSE));
    close.addEventListener('click', () => this.setOpen(false));
    this.state = h('span', { class: 'state off' }, 'Connecting…');
    const header = h(
      'div',
      { class: 'header' },
      h('div', { class: 'avatar', 'aria-hidden': 'true' }, name.slice(0, 1).toUpperCase()),
      h('div', { class: 'title' }, h('strong', { id: 'jack-title' }, name), this.state),
      close,
    );
    this.banner = h('div', { class: 'banner', role: 'status', hidden: true });
    this.more = h('button', { type: 'button', class: 'more', hidden: true }, 'Show earlier messages');
    this.more.addEventListener('click', () => this.client.loadOlder());
    this.greeting = config.greeting ? h('div', { class: 'msg assistant greeting' }, h('div', { class: 'bubble' }, config.greeting)) : null;
    this.log = h('div', { class: 'log', role: 'log', 'aria-live': 'polite', 'aria-relevant': 'additions', 'aria-label': 'Conversation', tabindex: '0' }, this.more, this.greeting);
    this.log.addEventListener('scroll', () => {
      if (this.log.scrollTop < 40) this.client.loadOlder();
      this.seen();
    }, { passive: true });
    this.typing = h('div', { class: 'typing', role: 'status', hidden: true }, h('span', { class: 'sr' }, `${name} is typing`), h('span', { class: 'dot' }), h('span', { class: 'dot' }), h('span', { class: 'dot' }));
    this.chips = h('div', { hidden: true });
    this.notice = h('div', { class: 'notice', role: 'alert', hidden: true });
    this.input = h('textarea', { rows: '1', placeholder: config.placeholder, 'aria-label': 'Message', maxlength: '20000', enterkeyhint: 'send' });
    this.input.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      }
    });
    this.input.addEventListener('input', () => {
      this.notice.hidden = true;
      this.client.typing(this.input.value.length > 0);
      this.input.style.height = 'auto';
      this.input.style.height = `${Math.min(this.input.scrollHeight + 2, 120)}px`;
    });
    const send = h('button', { type: 'submit', class: 'send', 'aria-label': 'Send message' }, icon(ICON_SEND));
    const form = h('form', { class: 'composer' }, this.input, send);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.submit();
    });
    this.announcer = h('div', { class: 'sr', role: 'status' });

    this.window = h(
      'div',
      { class: 'window', id: 'jack-window', role: 'dialog', 'aria-labelledby': 'jack-title', hidden: true },
      header,
      this.banner,
      this.log,
      this.typing,
      this.chips,
      this.notice,
      form,
    );
    this.window.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && !event.isComposing) {
        event.stopPropagation();
        this.setOpen(false);
      }
    });
    // The announcer stays outside the window: it speaks while the window is closed.
    this.root = h('div', { class: 'root' }, this.window, this.launcher, this.announcer);
    shadow.append(this.root);
    this.launcherLabel();

    client.changes.on('entry', (entry) => this.draw(entry));
    client.changes.on('reset', () => this.redraw());
    client.changes.on('link', () => this.link());
    client.changes.on('typing', ({ isTyping, role }) => this.showTyping(isTyping, role));
    client.changes.on('more', (more) => (this.more.hidden = !more));
    client.changes.on('seen', () => this.launcherLabel());
    for (const entry of client.timeline.entries) this.draw(entry);
  }

  /** Puts the widget on the page: one element at the end of `<body>`, nothing else touched. */
  attach(parent: HTMLElement): void {
    parent.append(this.host);
    this.applyTheme();
  }

  setOpen(open: boolean): void {
    if (open === this.isOpen) return;
    this.isOpen = open;
    this.window.hidden = !open;
    this.host.classList.toggle('open', open);
    this.launcher.setAttribute('aria-expanded', String(open));
    this.launcher.replaceChildren(icon(open ? ICON_CLOSE : ICON_CHAT), this.badge);
    this.launcherLabel();
    if (open) {
      this.scrollToEnd();
      this.input.focus();
      this.seen(true);
    } else if (this.host.shadowRoot?.activeElement) {
      this.launcher.focus();
    }
    this.onToggle(open);
  }

  /** The guest sees the log now (window open, tab visible): send `read`, clear the badge. */
  seen(now = false): void {
    const mark = () => {
      clearTimeout(this.seenTimer);
      this.seenTimer = undefined;
      if (this.isOpen && document.visibilityState === 'visible') this.client.markSeen();
    };
    // Messages arriving: once per burst (a replayed page of fifty is one `read`, not fifty).
    if (now) mark();
    else if (this.seenTimer === undefined) this.seenTimer = setTimeout(mark, SEEN_DELAY_MS);
  }

  /** Shows a problem under the composer (for the guest) and to screen readers. */
  showNotice(text: string): void {
    this.notice.textContent = text;
    this.notice.hidden = false;
  }

  private submit(): void {
    const text = this.input.value;
    if (!text.trim()) return;
    try {
      this.client.sendText(text);
    } catch (error) {
      if (error instanceof ChatError) {
        this.showNotice(error.code === 'MESSAGE_TOO_LARGE' ? `That message is too long (at most ${this.client.limits.maxMessageSize} characters). Please shorten it.` : error.message);
        return;
      }
      throw error;
    }
    this.input.value = '';
    this.input.style.height = '';
    this.notice.hidden = true;
  }

  /** Puts an entry's node where the timeline says it goes, and keeps the view's extras right. */
  private draw(entry: Entry): void {
    let node = this.nodes.get(entry.key);
    const fresh = !node;
    if (!node) {
      node = renderEntry(entry, this.client, this.config.botName);
      this.nodes.set(entry.key, node);
    }
    updateEntry(node, entry, this.client);
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
    if (fresh && entry.role !== 'guest') this.announce(entry);
    if (this.greeting) this.greeting.hidden = this.client.more;
    this.drawChips();
    this.launcherLabel();
    if (atEnd || (fresh && entry.role === 'guest' && !next)) this.scrollToEnd();
    this.seen();
  }

  private redraw(): void {
    for (const node of this.nodes.values()) node.remove();
    this.nodes.clear();
    for (const entry of this.client.timeline.entries) this.draw(entry);
    this.drawChips();
    this.launcherLabel();
  }

  /** Quick replies belong to the latest message only, until the guest answers. */
  private drawChips(): void {
    const entries = this.client.timeline.entries;
    const last = entries[entries.length - 1];
    const replies = last && last.role !== 'guest' ? last.message?.quickReplies : undefined;
    const key = replies?.length ? last!.key : '';
    if (this.chips.dataset.for === key) return;
    const chips = replies?.length ? quickReplies(replies, last!.message!, this.client) : h('div', { hidden: true });
    chips.dataset.for = key;
    // A tapped chip goes away with the others: keep the keyboard in the chat, at the input.
    const hadFocus = this.chips.contains(this.host.shadowRoot!.activeElement);
    this.chips.replaceWith(chips);
    this.chips = chips;
    if (hadFocus) this.input.focus();
  }

  private announce(entry: Entry): void {
    // The log region announces additions itself; this covers the dots and rich parts.
    if (this.isOpen) return;
    // Cleared first, so the same words are announced again for the next message.
    this.announcer.textContent = '';
    const unread = this.client.unread();
    setTimeout(() => (this.announcer.textContent = `New message from ${entry.role === 'staff' ? 'hotel staff' : this.config.botName}${unread > 1 ? ` (${unread} unread)` : ''}`), 50);
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
    const online = link === 'online';
    // Back online: what the guest sees now can be reported read.
    if (online) this.seen(true);
    this.state.textContent = online ? 'Online' : link === 'stopped' ? 'Unavailable' : 'Connecting…';
    this.state.classList.toggle('off', !online);
    this.root.dataset.link = link;
    clearTimeout(this.bannerTimer);
    if (online) {
      this.banner.hidden = true;
      return;
    }
    const text = link === 'stopped' ? 'Chat is not available on this page right now.' : 'Reconnecting… Your messages will be sent as soon as the connection is back.';
    this.bannerTimer = setTimeout(() => {
      this.banner.textContent = text;
      this.banner.hidden = false;
    }, link === 'stopped' ? 0 : BANNER_DELAY_MS);
  }

  private launcherLabel(): void {
    const unread = this.isOpen ? 0 : this.client.unread();
    this.badge.hidden = unread === 0;
    this.badge.textContent = unread > 99 ? '99+' : String(unread);
    const base = this.isOpen ? 'Close chat' : `Chat with ${this.config.botName}`;
    this.launcher.setAttribute('aria-label', unread ? `${base} (${unread} unread)` : base);
  }

  private nearEnd(): boolean {
    return this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 60;
  }

  private scrollToEnd(): void {
    this.log.scrollTop = this.log.scrollHeight;
  }

  private applyTheme(): void {
    const style = this.root.style;
    if (this.config.fontFamily) style.setProperty('--font', this.config.fontFamily);
    const primary = this.config.primaryColor;
    if (!primary) return;
    style.setProperty('--p', primary);
    // Whatever the page wrote (a name, hsl(), …), the computed value is rgb(): read it back.
    const rgb = parseColor(getComputedStyle(this.launcher).backgroundColor) ?? parseColor(primary);
    if (!rgb) return;
    style.setProperty('--on-p', textOn(rgb));
    style.setProperty('--p-ink', contrast(rgb, WHITE) >= 4.5 ? primary : `rgb(${INK.join(',')})`);
  }
}

/** Constructable stylesheets where the browser has them (no `style-src` needed under a CSP),
 * else a `<style>` carrying the page's nonce. */
function adoptStyles(shadow: ShadowRoot, text: string, nonce: string | undefined): void {
  try {
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(text);
    shadow.adoptedStyleSheets = [sheet];
  } catch {
    const style = document.createElement('style');
    if (nonce) style.nonce = nonce;
    style.textContent = text;
    shadow.append(style);
  }
}
