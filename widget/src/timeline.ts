// The conversation as the guest sees it: stored messages once each by `messageId`, in `seq`
// order, and the guest's own messages that are not stored yet after them. Pure logic: the
// view renders what this says, the tests drive it directly.

import type { ChatMessage, OutgoingFrame, Role } from "./protocol";

/** Where one of the guest's own messages is. Stored messages of others have no status. */
export type Status = "queued" | "sending" | "sent" | "read" | "failed";

export interface Entry {
  /** Stable for the entry's whole life: the client id of the guest's own, else the message id. */
  readonly key: string;
  role: Role;
  content: string;
  messageId?: string;
  seq?: number;
  clientMessageId?: string;
  timestamp?: string;
  message?: ChatMessage;
  status?: Status;
  /** Why a failed message failed, for the guest. */
  error?: string;
  /** The frame to (re)send while the message is not acknowledged. */
  frame?: OutgoingFrame;
  readonly order: number;
}

export class Timeline {
  readonly entries: Entry[] = [];
  private readonly byMessageId = new Map<string, Entry>();
  private readonly byClientId = new Map<string, Entry>();
  private readUpTo = 0;
  private counter = 0;

  /** A stored message arrived (live, replayed or from an older page). Null when already shown. */
  receive(message: ChatMessage): Entry | null {
    if (this.byMessageId.has(message.messageId)) return null;
    const own = message.clientMessageId ? this.byClientId.get(message.clientMessageId) : undefined;
    if (own && own.messageId === undefined && message.role === "guest") {
      // Our own message, stored: the replay or another tab's echo came before our ack.
      this.confirm(own, message.messageId, message.seq, message.timestamp);
      own.message = message;
      return own;
    }
    const entry: Entry = {
      key: message.messageId,
      role: message.role,
      content: message.content,
      messageId: message.messageId,
      seq: message.seq,
      clientMessageId: message.clientMessageId,
      timestamp: message.timestamp,
      message,
      order: this.counter++,
    };
    if (message.role === "guest") entry.status = message.seq <= this.readUpTo ? "read" : "sent";
    this.byMessageId.set(message.messageId, entry);
    if (entry.clientMessageId) this.byClientId.set(entry.clientMessageId, entry);
    this.place(entry);
    return entry;
  }

  /** The guest sent something: shown at once, after every stored message. */
  addPending(frame: OutgoingFrame, status: Status): Entry {
    const existing = this.byClientId.get(frame.clientMessageId);
    if (existing) return existing;
    const content = frame.type === "message" ? frame.content : (frame.label ?? frame.payload);
    const entry: Entry = {
      key: frame.clientMessageId,
      role: "guest",
      content,
      clientMessageId: frame.clientMessageId,
      frame,
      status,
      order: this.counter++,
    };
    this.byClientId.set(frame.clientMessageId, entry);
    this.entries.push(entry);
    return entry;
  }

  /** The server stored one of ours. Null when the ack is for nothing pending here. */
  ack(clientMessageId: string, messageId: string, seq: number, timestamp: string): Entry | null {
    const entry = this.byClientId.get(clientMessageId);
    if (!entry || entry.messageId !== undefined) return null;
    this.confirm(entry, messageId, seq, timestamp);
    return entry;
  }

  /** One of ours will not be stored (or not yet): the guest may retry. */
  setStatus(clientMessageId: string, status: Status, error?: string): Entry | null {
    const entry = this.byClientId.get(clientMessageId);
    if (!entry || entry.messageId !== undefined) return null;
    entry.status = status;
    entry.error = error;
    return entry;
  }

  /** The butler side read the guest's messages up to `upToSeq`: the entries that changed. */
  markRead(upToSeq: number): Entry[] {
    if (upToSeq <= this.readUpTo) return [];
    this.readUpTo = upToSeq;
    const changed: Entry[] = [];
    for (const entry of this.entries) {
      if (entry.role === "guest" && entry.status === "sent" && entry.seq !== undefined && entry.seq <= upToSeq) {
        entry.status = "read";
        changed.push(entry);
      }
    }
    return changed;
  }

  /** The guest's messages not stored yet, oldest first. */
  pending(): Entry[] {
    return this.entries.filter((e) => e.messageId === undefined && e.frame !== undefined);
  }

  /** The highest `seq` shown: what a reconnect resumes after. */
  highestSeq(): number {
    for (let i = this.entries.length - 1; i >= 0; i--) {
      const seq = this.entries[i]!.seq;
      if (seq !== undefined) return seq;
    }
    return 0;
  }

  /** Where a reconnect resumes: the highest `seq` up to which nothing is missing. An ack can
   * land before a lower `seq` from the butler side has arrived; resuming after the ack's
   * `seq` would skip that message for good. */
  resumeAfter(): number {
    let expected = 0;
    for (const entry of this.entries) {
      const seq = entry.seq;
      if (seq === undefined) continue;
      if (expected === 0 || seq === expected) expected = seq + 1;
      else if (seq > expected) break;
    }
    return expected === 0 ? 0 : expected - 1;
  }

  /** The lowest `seq` shown: where an older page ends. */
  lowestSeq(): number {
    return this.entries.find((e) => e.seq !== undefined)?.seq ?? 0;
  }

  /** Forgets every stored message (a different conversation); the guest's unsent ones stay,
   * unless this is another guest altogether. */
  reset(keepUnsent = true): void {
    const unsent = keepUnsent ? this.pending() : [];
    this.entries.length = 0;
    this.byMessageId.clear();
    this.byClientId.clear();
    this.readUpTo = 0;
    for (const entry of unsent) {
      this.byClientId.set(entry.key, entry);
      this.entries.push(entry);
    }
  }

  indexOf(entry: Entry): number {
    return this.entries.indexOf(entry);
  }

  private confirm(entry: Entry, messageId: string, seq: number, timestamp: string): void {
    entry.messageId = messageId;
    entry.seq = seq;
    entry.timestamp = timestamp;
    entry.status = seq <= this.readUpTo ? "read" : "sent";
    entry.error = undefined;
    entry.frame = undefined;
    this.byMessageId.set(messageId, entry);
    const at = this.entries.indexOf(entry);
    if (at >= 0) this.entries.splice(at, 1);
    this.place(entry);
  }

  /** Inserts a stored entry by `seq`, before every entry that is not stored yet. */
  private place(entry: Entry): void {
    const seq = entry.seq!;
    let i = this.entries.length;
    while (i > 0) {
      const before = this.entries[i - 1]!;
      if (before.seq !== undefined && before.seq < seq) break;
      i--;
    }
    this.entries.splice(i, 0, entry);
  }
}
