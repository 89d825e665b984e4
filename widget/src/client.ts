// The chat session: protocol v1 over a `Connection`, the `Timeline`, and what must survive a
// reload in `WidgetStorage`. No DOM here: the view listens to `changes`, the SDK to `events`.
//
// The delivery promise, from the widget's side (ARCHITECTURE.md, "Exactly once, in order"):
// - every message the guest sends is queued (memory and storage) until its `message_ack`,
//   and resent with the same `clientMessageId` after every (re)identify;
// - every (re)connect identifies with `lastSeq` = the highest `seq` shown, so the edge
//   replays exactly what was missed; the timeline drops any `messageId` already shown.

import { Connection, type ConnectionDeps } from "./connection";
import { Emitter } from "./emitter";
import {
  type Attachment,
  type ChatMessage,
  type ClientFrame,
  type IdentifyFrame,
  type Limits,
  type OutgoingFrame,
  type Role,
  type ServerFrame,
  newClientMessageId,
  newVisitorId,
  parseServerFrame,
  utf8Length,
} from "./protocol";
import type { WidgetStorage } from "./storage";
import { type Entry, Timeline } from "./timeline";

/** The SDK's events (protocol v1's names) and what they carry. */
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

export type Link = "connecting" | "online" | "offline" | "stopped";

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

/** A retryable error (rate limited, backend busy) waits about this long before the resend. */
const RETRY_AFTER_MS = 2_000;
/** Messages go out at most half as fast as the edge accepts frames (`limits.maxFramesPerSecond`,
 * bursts of twice that; 20 a second unless the edge says otherwise), leaving room for typing
 * and read frames, so that a burst from the SDK is paced here rather than refused there. */
const DEFAULT_FRAMES_PER_SECOND = 20;
/** Waiting for an answer (identified, an ack) this long with nothing at all from the server
 * means the socket is dead without knowing it (laptop sleep, a Wi-Fi switch): start over. */
export const ANSWER_TIMEOUT_MS = 15_000;
const TYPING_REFRESH_MS = 3_000;
const TYPING_IDLE_MS = 4_000;
const HISTORY_PAGE = 50;
/** The visitor token is renewed (by identifying again) halfway to its expiry, but not more
 * often than this, nor later than a browser timer can wait. */
const MIN_RENEW_MS = 1_000;
const MAX_TIMER_MS = 2 ** 31 - 1;

export class ChatClient {
  readonly timeline = new Timeline();
  readonly events = new Emitter<ChatEvents>();
  readonly changes = new Emitter<Changes>();
  limits: Limits = { maxMessageSize: 4096, maxFileSize: 5_242_880 };
  link: Link = "connecting";
  conversationId: string | undefined;
  /** Older messages exist before the first one shown. */
  more = false;
  private readonly connection: Connection;
  private sessionId = "";
  private identified = false;
  private profile: UserIdentity = {};
  private sentIdentify: IdentifyFrame | null = null;
  private loadingOlder = false;
  /** Asks for the older page again if the request was refused by the edge's rate limit. */
  private olderTimer: unknown = null;
  private readSent = 0;
  private typingSince = 0;
  private typingTimer: unknown = null;
  /** Armed while an answer is awaited; any frame from the server re-arms it. */
  private watchdog: unknown = null;
  /** The unsent message being sent: one at a time, so they are stored in the order typed. */
  private inFlight: string | null = null;
  private retryTimer: unknown = null;
  /** Sends left in the current burst, refilled at half the edge's frame rate. */
  private sendTokens = DEFAULT_FRAMES_PER_SECOND;
  private tokensAt = 0;
  private paceTimer: unknown = null;
  /** Renews the visitor token while the chat stays open (see `scheduleRenewal`). */
  private renewTimer: unknown = null;

  constructor(
    url: string,
    private readonly storage: WidgetStorage,
    private readonly deps: ConnectionDeps & { now(): number },
  ) {
    this.connection = new Connection(url, deps, {
      open: () => this.setLink("connecting"),
      frame: (text) => this.onFrame(text),
      closed: (code, reason, retryIn) => {
        this.identified = false;
        this.loadingOlder = false;
        this.inFlight = null;
        this.disarm();
        this.cancelRenewal();
        for (const entry of this.timeline.pending()) if (entry.status === "sending") this.setStatus(entry, "queued");
        this.setLink(retryIn === null ? "stopped" : "offline");
        this.events.emit("disconnected", { code, reason, retryIn });
      },
    });
    for (const queued of storage.outbox(deps.now())) {
      this.changes.emit("entry", this.timeline.addPending(queued.frame, "queued"));
    }
  }

  start(): void {
    this.connection.start();
  }

  storageKey(name: "identity" | "seen" | "outbox"): string {
    return this.storage.key(name);
  }

  stop(): void {
    this.cancelRenewal();
    this.connection.stop();
    this.setLink("stopped");
  }

  /** The network may be back (tab visible again, `online`): reconnect now, not after the
   * wait; a socket that owes an answer may be a dead one from before, so it is replaced. */
  nudge(): void {
    if (this.watchdog !== null && this.connection.state === "open") this.connection.restart();
    else this.connection.nudge();
  }

  /** Sends a text message; returns its `clientMessageId`, or throws when it cannot be sent at all. */
  sendText(content: string): string {
    const text = content.trim();
    if (!text) throw new ChatError("EMPTY_MESSAGE", "the message is empty");
    if (utf8Length(text) > this.limits.maxMessageSize) {
      throw new ChatError("MESSAGE_TOO_LARGE", `the message is longer than ${this.limits.maxMessageSize} bytes`);
    }
    return this.enqueue({ type: "message", clientMessageId: newClientMessageId(), content: text });
  }

  /** Sends uploaded files (with an optional caption) as one message. */
  sendAttachments(attachments: Attachment[], caption = ""): string {
    const content = caption.trim();
    if (utf8Length(content) > this.limits.maxMessageSize) {
      throw new ChatError("MESSAGE_TOO_LARGE", `the message is longer than ${this.limits.maxMessageSize} bytes`);
    }
    return this.enqueue({ type: "message", clientMessageId: newClientMessageId(), content, attachments });
  }

  /** The visitor token, for the HTTP calls (uploads, download URLs). */
  visitorToken(): string | undefined {
    return this.storage.identity()?.visitorToken;
  }

  /** A tap on a quick reply or a postback button. */
  sendPostback(label: string, payload: string, messageId?: string): string {
    return this.enqueue({ type: "postback", clientMessageId: newClientMessageId(), payload, label, messageId });
  }

  /** Sends a failed message again, with its original `clientMessageId`. */
  retry(clientMessageId: string): void {
    const entry = this.timeline.pending().find((e) => e.clientMessageId === clientMessageId);
    if (!entry?.frame) return;
    this.storage.queue(entry.frame, this.deps.now());
    this.setStatus(entry, "queued");
    this.pump();
  }

  /** Who the guest is, from the hotel's page (name, email, or a signed external id). */
  identify(user: UserIdentity): void {
    const switching = user.visitorId !== undefined && user.visitorId !== this.storage.identity()?.visitorId;
    if (switching) {
      // Another guest: nothing of the previous one goes along (not even unsent messages).
      this.profile = { ...user };
      this.storage.clearVisitor();
      this.storage.setIdentity({ visitorId: user.visitorId! });
      this.timeline.reset(false);
      this.inFlight = null;
      this.readSent = 0;
      this.more = false;
      this.changes.emit("reset", undefined);
    } else {
      this.profile = { ...this.profile, ...user };
    }
    if (this.sessionId && this.link !== "offline") this.sendIdentify();
  }

  /** The guest typed (true) or stopped (false); sent at most every few seconds. */
  typing(isTyping: boolean): void {
    const now = this.deps.now();
    if (this.typingTimer !== null) this.deps.clearTimeout(this.typingTimer);
    this.typingTimer = null;
    if (!this.identified) return;
    if (isTyping) {
      if (now - this.typingSince > TYPING_REFRESH_MS) {
        this.typingSince = now;
        this.send({ type: "typing", isTyping: true });
      }
      this.typingTimer = this.deps.setTimeout(() => this.typing(false), TYPING_IDLE_MS);
    } else if (this.typingSince) {
      this.typingSince = 0;
      this.send({ type: "typing", isTyping: false });
    }
  }

  /** The guest has seen everything shown: tell the butler side, and remember it for the badge. */
  markSeen(): void {
    const upTo = this.timeline.highestSeq();
    if (upTo <= 0 || !this.conversationId) return;
    if (upTo > this.storage.seen(this.conversationId)) {
      this.storage.setSeen(this.conversationId, upTo);
      this.changes.emit("seen", upTo);
    }
    if (upTo > this.readSent && this.identified && this.send({ type: "read", upToSeq: upTo })) this.readSent = upTo;
  }

  /** Messages from the butler side the guest has not seen yet. */
  unread(): number {
    const seen = this.storage.seen(this.conversationId);
    return this.timeline.entries.filter((e) => e.role !== "guest" && e.seq !== undefined && e.seq > seen).length;
  }

  /** Asks for the page before the first message shown. */
  loadOlder(): boolean {
    if (!this.more || this.loadingOlder || !this.identified) return false;
    const beforeSeq = this.timeline.lowestSeq();
    if (beforeSeq <= 1) return false;
    this.loadingOlder = this.send({ type: "load_history", beforeSeq, limit: HISTORY_PAGE });
    return this.loadingOlder;
  }

  private enqueue(frame: OutgoingFrame): string {
    this.storage.queue(frame, this.deps.now());
    const entry = this.timeline.addPending(frame, "queued");
    this.changes.emit("entry", entry);
    if (frame.type === "message") this.typing(false);
    this.pump();
    return frame.clientMessageId;
  }

  /** Sends the oldest unsent message when none is awaiting its ack: one at a time, so a
   * rate-limited or retried message cannot be overtaken by a later one. */
  private pump(): void {
    if (!this.identified || this.inFlight !== null || this.retryTimer !== null || this.paceTimer !== null) return;
    const next = this.timeline.pending().find((e) => e.status === "queued" || e.status === "sending");
    if (!next?.frame) return;
    const now = this.deps.now();
    const rate = Math.max(0.5, (this.limits.maxFramesPerSecond ?? DEFAULT_FRAMES_PER_SECOND) / 2);
    this.sendTokens = Math.min(rate * 2, this.sendTokens + ((now - this.tokensAt) / 1000) * rate);
    this.tokensAt = now;
    if (this.sendTokens < 1) {
      const wait = Math.ceil(((1 - this.sendTokens) / rate) * 1000);
      this.paceTimer = this.deps.setTimeout(() => {
        this.paceTimer = null;
        this.pump();
      }, wait);
      return;
    }
    if (!this.send(next.frame)) return;
    this.sendTokens -= 1;
    this.inFlight = next.clientMessageId!;
    this.setStatus(next, "sending");
    this.arm();
  }

  /** The in-flight message is settled (stored, refused): on to the next one. */
  private settled(clientMessageId: string): void {
    if (this.inFlight === clientMessageId) this.inFlight = null;
    this.pump();
  }

  private setStatus(entry: Entry, status: Entry["status"], error?: string): void {
    if (!entry.clientMessageId) return;
    const changed = this.timeline.setStatus(entry.clientMessageId, status!, error);
    if (changed) this.changes.emit("entry", changed);
  }

  private send(frame: ClientFrame): boolean {
    return this.connection.send(JSON.stringify(frame));
  }

  private sendIdentify(): void {
    let stored = this.storage.identity();
    if (!stored && !this.profile.visitorId) {
      // A first visit: the id is made here and kept at once, so tabs opened together share it.
      stored = { visitorId: newVisitorId() };
      this.storage.setIdentity(stored);
    }
    const lastSeq = this.timeline.resumeAfter();
    const frame: IdentifyFrame = {
      type: "identify",
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
    this.inFlight = null;
    if (this.send(frame)) this.arm();
  }

  /** A visitor token works until it expires and each identify brings a new one: a chat left
   * open identifies again halfway to the expiry, so that its token (which the uploads use, and
   * which resumes the conversation after a reload) never runs out while the guest is here. */
  private scheduleRenewal(expiresAt: string | undefined): void {
    this.cancelRenewal();
    const expires = expiresAt === undefined ? NaN : Date.parse(expiresAt);
    if (!Number.isFinite(expires)) return;
    const wait = Math.min(Math.max((expires - this.deps.now()) / 2, MIN_RENEW_MS), MAX_TIMER_MS);
    this.renewTimer = this.deps.setTimeout(() => {
      this.renewTimer = null;
      if (this.identified) this.sendIdentify();
    }, wait);
  }

  private cancelRenewal(): void {
    if (this.renewTimer !== null) this.deps.clearTimeout(this.renewTimer);
    this.renewTimer = null;
  }

  /** Expects an answer from the server within `ANSWER_TIMEOUT_MS`. */
  private arm(): void {
    this.disarm();
    this.watchdog = this.deps.setTimeout(() => {
      this.watchdog = null;
      this.connection.restart();
    }, ANSWER_TIMEOUT_MS);
  }

  private disarm(): void {
    if (this.watchdog !== null) this.deps.clearTimeout(this.watchdog);
    this.watchdog = null;
  }

  private onFrame(text: string): void {
    const frame = parseServerFrame(text);
    if (!frame) return;
    this.handle(frame);
    // The server is alive; still owed an answer? Then wait for it afresh.
    if (this.watchdog !== null || this.inFlight !== null) {
      if (this.inFlight !== null || !this.identified) this.arm();
      else this.disarm();
    }
  }

  private handle(frame: ServerFrame): void {
    switch (frame.type) {
      case "connected":
        this.sessionId = frame.sessionId;
        if (frame.limits) this.limits = frame.limits;
        this.sendIdentify();
        break;
      case "history":
        this.onHistory(frame.messages ?? [], frame.conversationId, frame.hasMore === true);
        break;
      case "identified":
        this.onIdentified(frame);
        break;
      case "message":
        this.onMessage(frame);
        break;
      case "message_ack": {
        this.storage.unqueue(frame.clientMessageId, this.deps.now());
        const entry = this.timeline.ack(frame.clientMessageId, frame.messageId, frame.seq, frame.timestamp);
        if (entry) {
          this.changes.emit("entry", entry);
          const { type: _type, ...ack } = frame;
          this.events.emit("message_sent", ack);
        }
        this.settled(frame.clientMessageId);
        break;
      }
      case "typing":
        if (frame.role !== "guest") {
          this.changes.emit("typing", { isTyping: frame.isTyping, role: frame.role });
          this.events.emit("typing", { isTyping: frame.isTyping, role: frame.role });
        }
        break;
      case "read":
        for (const entry of this.timeline.markRead(frame.upToSeq)) this.changes.emit("entry", entry);
        break;
      case "error":
        this.onError(frame);
        break;
    }
  }

  private onHistory(messages: ChatMessage[], conversationId: string | undefined, hasMore: boolean): void {
    if (conversationId && this.conversationId && conversationId !== this.conversationId) {
      this.timeline.reset();
      this.changes.emit("reset", undefined);
    }
    if (conversationId) this.conversationId = conversationId;
    // The answer to `load_history` ends before the first message shown; a second answer to a
    // page asked for twice (see `askOlderAgain`) brings nothing new and is not it.
    const lowest = this.timeline.lowestSeq();
    const older =
      this.loadingOlder && (messages.length === 0 || lowest === 0 || messages[messages.length - 1]!.seq < lowest);
    // That answer, or the latest page of a first identify, says whether older pages exist; a
    // replay after `lastSeq` says nothing about them.
    if (older || this.timeline.highestSeq() === 0) this.setMore(hasMore);
    if (older) this.loadingOlder = false;
    // Newest first for an older page, so each lands above the one after it.
    for (const message of older ? [...messages].reverse() : messages) this.onMessage(message);
  }

  private onIdentified(frame: Extract<ServerFrame, { type: "identified" }>): void {
    const sent = this.sentIdentify;
    const stored = this.storage.identity();
    if (
      sent &&
      !sent.visitorToken &&
      !sent.userHash &&
      sent.visitorId &&
      frame.visitorId !== sent.visitorId &&
      stored?.visitorId === sent.visitorId &&
      stored.visitorToken
    ) {
      // Another tab bound this visitor id a moment ago: identify again with its token.
      this.sendIdentify();
      return;
    }
    this.storage.setIdentity({ visitorId: frame.visitorId, visitorToken: frame.visitorToken });
    if (frame.conversationId && this.conversationId && frame.conversationId !== this.conversationId) {
      this.timeline.reset();
      this.changes.emit("reset", undefined);
    }
    this.conversationId = frame.conversationId ?? this.conversationId;
    this.identified = true;
    this.scheduleRenewal(frame.visitorTokenExpiresAt);
    this.readSent = 0;
    this.connection.healthy();
    this.setLink("online");
    this.loadingOlder = false;
    this.events.emit("connected", {
      sessionId: this.sessionId,
      conversationId: this.conversationId,
      visitorId: frame.visitorId,
    });
    // Everything not acknowledged goes again, oldest first, with its original id.
    this.pump();
  }

  private onMessage(message: ChatMessage): void {
    const wasPending =
      message.clientMessageId !== undefined &&
      this.timeline.pending().some((e) => e.clientMessageId === message.clientMessageId);
    const entry = this.timeline.receive(message);
    if (!entry) return;
    if (wasPending && message.clientMessageId) {
      // Our own, stored (its echo or a replay came before the ack): as good as the ack.
      this.storage.unqueue(message.clientMessageId, this.deps.now());
      this.events.emit("message_sent", {
        clientMessageId: message.clientMessageId,
        messageId: message.messageId,
        seq: message.seq,
        conversationId: message.conversationId,
        timestamp: message.timestamp,
      });
      this.settled(message.clientMessageId);
    }
    this.changes.emit("entry", entry);
    if (message.role !== "guest") this.changes.emit("typing", { isTyping: false, role: message.role });
    this.events.emit("message", message);
  }

  private onError(frame: Extract<ServerFrame, { type: "error" }>): void {
    const { type: _type, ...error } = frame;
    this.events.emit("error", error);
    const entry = frame.clientMessageId
      ? this.timeline.pending().find((e) => e.clientMessageId === frame.clientMessageId)
      : undefined;
    if (entry) {
      if (this.inFlight === entry.clientMessageId) this.inFlight = null;
      if (frame.retryable) {
        // Kept, and sent again shortly with the same id (stored once whatever happened);
        // the messages after it wait, so the order stays as typed.
        this.setStatus(entry, "queued");
        if (this.retryTimer === null) {
          const delay = Math.max(
            RETRY_AFTER_MS / 2 + (RETRY_AFTER_MS / 2) * this.deps.random(),
            frame.retryAfterMs ?? 0,
          );
          this.retryTimer = this.deps.setTimeout(() => {
            this.retryTimer = null;
            this.pump();
          }, delay);
        }
      } else {
        this.storage.unqueue(entry.clientMessageId!, this.deps.now());
        this.setStatus(entry, "failed", frame.message);
        this.pump();
      }
      return;
    }
    if (!this.identified || frame.code === "NOT_IDENTIFIED") {
      // The identify did not go through (a backend is down, or too many new visitors came
      // from this address): start over on a fresh socket, no sooner than the server asked.
      this.connection.restart(frame.retryAfterMs);
    } else if (this.loadingOlder && frame.code === "RATE_LIMITED") {
      // The refused frame may have been the `load_history` or a `read` or `typing` beside it:
      // ask again shortly unless the page comes meanwhile (a second copy would change nothing).
      this.askOlderAgain();
    } else if (this.loadingOlder) {
      // The older page will not come.
      this.loadingOlder = false;
    }
  }

  private askOlderAgain(): void {
    if (this.olderTimer !== null) return;
    const delay = RETRY_AFTER_MS / 2 + (RETRY_AFTER_MS / 2) * this.deps.random();
    this.olderTimer = this.deps.setTimeout(() => {
      this.olderTimer = null;
      if (!this.loadingOlder || !this.identified) return;
      this.loadingOlder = this.send({
        type: "load_history",
        beforeSeq: this.timeline.lowestSeq(),
        limit: HISTORY_PAGE,
      });
    }, delay);
  }

  private setLink(link: Link): void {
    if (this.link === link) return;
    this.link = link;
    this.changes.emit("link", link);
  }

  private setMore(more: boolean): void {
    this.more = more;
    this.changes.emit("more", more);
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
