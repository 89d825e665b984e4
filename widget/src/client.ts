// The chat session: protocol v1 over a `Connection`, the `Timeline`, and what must survive a
// reload in `WidgetStorage`. No DOM here: the view listens to `changes`, the SDK to `events`.
//
// The delivery promise, from the widget's side (DESIGN.md "Delivery semantics"):
// - every message the guest sends is queued (memory and storage) until its `message_ack`,
//   and resent with the same `clientMessageId` after every (re)identify;
// - every (re)connect identifies with `lastSeq` = the highest `seq` shown, so the edge
//   replays exactly what was missed; the timeline drops any `messageId` already shown.

import { Connection, type ConnectionDeps } from './connection';
import { Emitter } from './emitter';
import {
  type ChatMessage,
  type ClientFrame,
  type IdentifyFrame,
  type Limits,
  type OutgoingFrame,
  type Role,
  type ServerFrame,
  newClientMessageId,
  parseServerFrame,
  utf8Length,
} from './protocol';
import type { WidgetStorage } from './storage';
import { type Entry, Timeline } from './timeline';

/** The SDK's events (the spec's names) and what they carry. */
export interface ChatEvents {
  connected: { sessionId: string; conversationId?: string; visitorId: string };
  disconnected: { code: number; reason: string; retryIn: number | null };
  message: ChatMessage;
  typing: { isTyping: boolean; role: Role };
  message_sent: { clientMessageId: string; messageId: string; seq: number; conversationId: string; timestamp: string };
  error: { code: string; message: string; clientMessageId?: string; retryable?: boolean };
  opened: undefined;
  closed: undefined;
}

export type Link = 'connecting' | 'online' | 'offline' | 'stopped';

/** What the view redraws. */
export interface Changes {
  entry: Entry;
  reset: undefined;
  link: Link;
  typing: { isTyping: boolean; role: Role };
  more: boolean;
  seen: number;
}

export interface UserIdentity {
  name?: string;
  email?: string;
  /** The hotel's own id for this guest, with `userHash` = HMAC-SHA256(identity secret, visitorId). */
  visitorId?: string;
  userHash?: string;
}

/** A retryable error (rate limited, backend busy) waits this long before the resend. */
const RETRY_AFTER_MS = 2_000;
const TYPING_REFRESH_MS = 3_000;
const TYPING_IDLE_MS = 4_000;
const HISTORY_PAGE = 50;

export class ChatClient {
  readonly timeline = new Timeline();
  readonly events = new Emitter<ChatEvents>();
  readonly changes = new Emitter<Changes>();
  limits: Limits = { maxMessageSize: 4096, maxFileSize: 5_242_880 };
  link: Link = 'connecting';
  conversationId: string | undefined;
  /** Older messages exist before the first one shown. */
  more = false;
  private readonly connection: Connection;
  private sessionId = '';
  private identified = false;
  private profile: UserIdentity = {};
  private sentIdentify: IdentifyFrame | null = null;
  private loadingOlder = false;
  private readSent = 0;
  private typingSince = 0;
  private typingTimer: unknown = null;

  constructor(
    url: string,
    private readonly storage: WidgetStorage,
    private readonly deps: ConnectionDeps & { now(): number },
  ) {
    this.connection = new Connection(url, deps, {
      open: () => this.setLink('connecting'),
      frame: (text) => this.onFrame(text),
      closed: (code, reason, retryIn) => {
        this.identified = false;
        for (const entry of this.timeline.pending()) if (entry.status === 'sending') this.setStatus(entry, 'queued');
        this.setLink(retryIn === null ? 'stopped' : 'offline');
        this.events.emit('disconnected', { code, reason, retryIn });
      },
    });
    for (const queued of storage.outbox(deps.now())) {
      this.changes.emit('entry', this.timeline.addPending(queued.frame, 'queued'));
    }
  }

  start(): void {
    this.connection.start();
  }

  storageKey(name: 'identity' | 'seen' | 'outbox'): string {
    return this.storage.key(name);
  }

  stop(): void {
    this.connection.stop();
    this.setLink('stopped');
  }

  /** The network may be back (tab visible again, `online`): reconnect now, not after the wait. */
  nudge(): void {
    this.connection.nudge();
  }

  /** Sends a text message; returns its `clientMessageId`, or throws when it cannot be sent at all. */
  sendText(content: string): string {
    const text = content.trim();
    if (!text) throw new ChatError('EMPTY_MESSAGE', 'the message is empty');
    if (utf8Length(text) > this.limits.maxMessageSize) {
      throw new ChatError('MESSAGE_TOO_LARGE', `the message is longer than ${this.limits.maxMessageSize} bytes`);
    }
    return this.enqueue({ type: 'message', clientMessageId: newClientMessageId(), content: text });
  }

  /** A tap on a quick reply or a postback button. */
  sendPostback(label: string, payload: string, messageId?: string): string {
    return this.enqueue({ type: 'postback', clientMessageId: newClientMessageId(), payload, label, messageId });
  }

  /** Sends a failed message again, with its original `clientMessageId`. */
  retry(clientMessageId: string): void {
    const entry = this.timeline.pending().find((e) => e.clientMessageId === clientMessageId);
    if (!entry?.frame) return;
    this.storage.queue(entry.frame, this.deps.now());
    this.transmit(entry);
  }

  /** Who the guest is, from the hotel's page (name, email, or a signed external id). */
  identify(user: UserIdentity): void {
    const switching = user.visitorId !== undefined && user.visitorId !== this.storage.identity()?.visitorId;
    this.profile = { ...this.profile, ...user };
    if (switching) {
      // Another visitor: another conversation, whose history arrives with the identify.
      this.storage.clearVisitor();
      this.storage.setIdentity({ visitorId: user.visitorId! });
      this.timeline.reset();
      this.readSent = 0;
      this.more = false;
      this.changes.emit('reset', undefined);
    }
    if (this.sessionId && this.link !== 'offline') this.sendIdentify();
  }

  /** The guest typed (true) or stopped (false); sent at most every few seconds. */
  typing(isTyping: boolean): void {
    const now = this.deps.now();
    if (this.typingTimer !== null) this.deps.clearTimeout(this.typingTimer);
    this.typingTimer = null;
    if (isTyping) {
      if (now - this.typingSince > TYPING_REFRESH_MS) {
        this.typingSince = now;
        this.send({ type: 'typing', isTyping: true });
      }
      this.typingTimer = this.deps.setTimeout(() => this.typing(false), TYPING_IDLE_MS);
    } else if (this.typingSince) {
      this.typingSince = 0;
      this.send({ type: 'typing', isTyping: false });
    }
  }

  /** The guest has seen everything shown: tell the butler side, and remember it for the badge. */
  markSeen(): void {
    const upTo = this.timeline.highestSeq();
    if (upTo <= 0) return;
    if (upTo > this.storage.seen()) {
      this.storage.setSeen(upTo);
      this.changes.emit('seen', upTo);
    }
    if (upTo > this.readSent && this.identified && this.send({ type: 'read', upToSeq: upTo })) this.readSent = upTo;
  }

  /** Messages from the butler side the guest has not seen yet. */
  unread(): number {
    const seen = this.storage.seen();
    return this.timeline.entries.filter((e) => e.role !== 'guest' && e.seq !== undefined && e.seq > seen).length;
  }

  /** Asks for the page before the first message shown. */
  loadOlder(): boolean {
    if (!this.more || this.loadingOlder || !this.identified) return false;
    const beforeSeq = this.timeline.lowestSeq();
    if (beforeSeq <= 1) return false;
    this.loadingOlder = this.send({ type: 'load_history', beforeSeq, limit: HISTORY_PAGE });
    return this.loadingOlder;
  }

  private enqueue(frame: OutgoingFrame): string {
    this.storage.queue(frame, this.deps.now());
    const entry = this.timeline.addPending(frame, 'queued');
    this.changes.emit('entry', entry);
    if (this.identified) this.transmit(entry);
    if (frame.type === 'message') this.typing(false);
    return frame.clientMessageId;
  }

  private transmit(entry: Entry): void {
    if (!entry.frame) return;
    this.setStatus(entry, this.identified && this.send(entry.frame) ? 'sending' : 'queued');
  }

  private setStatus(entry: Entry, status: Entry['status'], error?: string): void {
    if (!entry.clientMessageId) return;
    const changed = this.timeline.setStatus(entry.clientMessageId, status!, error);
    if (changed) this.changes.emit('entry', changed);
  }

  private send(frame: ClientFrame): boolean {
    return this.connection.send(JSON.stringify(frame));
  }

  private sendIdentify(): void {
    const stored = this.storage.identity();
    const lastSeq = this.timeline.highestSeq();
    const frame: IdentifyFrame = {
      type: 'identify',
      visitorId: this.profile.visitorId ?? stored?.visitorId,
      visitorToken: stored?.visitorToken,
      name: this.profile.name,
      email: this.profile.email,
      userHash: this.profile.userHash,
      resumeConversation: true,
      // Nothing shown yet: the latest page (older ones on scroll); else exactly what was missed.
      lastSeq: lastSeq > 0 ? lastSeq : undefined,
    };
    this.sentIdentify = frame;
    this.identified = false;
    this.send(frame);
  }

  private onFrame(text: string): void {
    const frame = parseServerFrame(text);
    if (frame) this.handle(frame);
  }

  private handle(frame: ServerFrame): void {
    switch (frame.type) {
      case 'connected':
        this.sessionId = frame.sessionId;
        if (frame.limits) this.limits = frame.limits;
        this.sendIdentify();
        break;
      case 'history':
        this.onHistory(frame.messages ?? [], frame.conversationId, frame.hasMore === true);
        break;
      case 'identified':
        this.onIdentified(frame);
        break;
      case 'message':
        this.onMessage(frame);
        break;
      case 'message_ack': {
        this.storage.unqueue(frame.clientMessageId, this.deps.now());
        const entry = this.timeline.ack(frame.clientMessageId, frame.messageId, frame.seq, frame.timestamp);
        if (entry) this.changes.emit('entry', entry);
        const { type: _type, ...ack } = frame;
        this.events.emit('message_sent', ack);
        break;
      }
      case 'typing':
        if (frame.role !== 'guest') {
          this.changes.emit('typing', { isTyping: frame.isTyping, role: frame.role });
          this.events.emit('typing', { isTyping: frame.isTyping, role: frame.role });
        }
        break;
      case 'read':
        for (const entry of this.timeline.markRead(frame.upToSeq)) this.changes.emit('entry', entry);
        break;
      case 'error':
        this.onError(frame);
        break;
    }
  }

  private onHistory(messages: ChatMessage[], conversationId: string | undefined, hasMore: boolean): void {
    if (conversationId && this.conversationId && conversationId !== this.conversationId) {
      this.timeline.reset();
      this.changes.emit('reset', undefined);
    }
    if (conversationId) this.conversationId = conversationId;
    const older = this.loadingOlder;
    // The answer to `load_history`, or the latest page of a first identify, says whether older
    // pages exist; a replay after `lastSeq` says nothing about them.
    if (older || this.timeline.highestSeq() === 0) this.setMore(hasMore);
    this.loadingOlder = false;
    // Newest first for an older page, so each lands above the one after it.
    for (const message of older ? [...messages].reverse() : messages) this.onMessage(message);
  }

  private onIdentified(frame: Extract<ServerFrame, { type: 'identified' }>): void {
    const sent = this.sentIdentify;
    const stored = this.storage.identity();
    if (sent && !sent.visitorToken && !sent.userHash && sent.visitorId && frame.visitorId !== sent.visitorId && stored?.visitorId === sent.visitorId && stored.visitorToken) {
      // Another tab bound this visitor id a moment ago: identify again with its token.
      this.sendIdentify();
      return;
    }
    this.storage.setIdentity({ visitorId: frame.visitorId, visitorToken: frame.visitorToken });
    if (frame.conversationId && this.conversationId && frame.conversationId !== this.conversationId) {
      this.timeline.reset();
      this.changes.emit('reset', undefined);
    }
    this.conversationId = frame.conversationId ?? this.conversationId;
    this.identified = true;
    this.readSent = 0;
    this.connection.healthy();
    this.setLink('online');
    // Everything not acknowledged goes again, oldest first, with its original id.
    for (const entry of this.timeline.pending()) if (entry.status !== 'failed') this.transmit(entry);
    this.events.emit('connected', { sessionId: this.sessionId, conversationId: this.conversationId, visitorId: frame.visitorId });
  }

  private onMessage(message: ChatMessage): void {
    const wasPending = message.clientMessageId !== undefined && this.timeline.pending().some((e) => e.clientMessageId === message.clientMessageId);
    const entry = this.timeline.receive(message);
    if (!entry) return;
    if (wasPending && message.clientMessageId) this.storage.unqueue(message.clientMessageId, this.deps.now());
    this.changes.emit('entry', entry);
    if (message.role !== 'guest') this.changes.emit('typing', { isTyping: false, role: message.role });
    this.events.emit('message', message);
  }

  private onError(frame: Extract<ServerFrame, { type: 'error' }>): void {
    const { type: _type, ...error } = frame;
    this.events.emit('error', error);
    const entry = frame.clientMessageId ? this.timeline.pending().find((e) => e.clientMessageId === frame.clientMessageId) : undefined;
    if (entry) {
      if (frame.retryable) {
        // Kept and sent again shortly, with the same id: stored once whatever happened.
        this.setStatus(entry, 'queued');
        this.deps.setTimeout(() => {
          if (entry.messageId === undefined && entry.status === 'queued') this.transmit(entry);
        }, RETRY_AFTER_MS);
      } else {
        this.storage.unqueue(entry.clientMessageId!, this.deps.now());
        this.setStatus(entry, 'failed', frame.message);
      }
      return;
    }
    if (!this.identified || frame.code === 'NOT_IDENTIFIED') {
      // The identify did not go through (a backend is down): start over on a fresh socket.
      this.connection.restart();
    } else if (this.loadingOlder) {
      this.loadingOlder = false;
    }
  }

  private setLink(link: Link): void {
    if (this.link === link) return;
    this.link = link;
    this.changes.emit('link', link);
  }

  private setMore(more: boolean): void {
    this.more = more;
    this.changes.emit('more', more);
  }
}

export class ChatError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}
