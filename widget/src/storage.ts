// What the widget keeps in the page's localStorage, per hotel: the visitor's identity, the
// last `seq` the guest has seen, and the messages not yet stored by the server. A browser that
// refuses storage (private mode, blocked cookies) gets a memory-only store: the chat works,
// it just does not survive a reload.

import type { OutgoingFrame } from "./protocol";

export interface KeyValue {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface Identity {
  visitorId: string;
  visitorToken?: string;
}

export interface QueuedFrame {
  frame: OutgoingFrame;
  /** When the guest sent it (ms); very old unsent messages are dropped, not sent late. */
  at: number;
}

/** Unsent messages older than this are not sent after a reload. */
export const OUTBOX_MAX_AGE_MS = 24 * 3600 * 1000;

export class WidgetStorage {
  private readonly prefix: string;

  constructor(
    private readonly kv: KeyValue,
    hotelId: string,
  ) {
    this.prefix = `jack:${hotelId}:`;
  }

  /** The page's localStorage, or memory when it cannot be used. */
  static open(hotelId: string): WidgetStorage {
    try {
      const kv = window.localStorage;
      const probe = "__jack_probe__";
      kv.setItem(probe, "1");
      kv.removeItem(probe);
      return new WidgetStorage(kv, hotelId);
    } catch {
      return new WidgetStorage(memory(), hotelId);
    }
  }

  key(name: "identity" | "seen" | "outbox"): string {
    return this.prefix + name;
  }

  identity(): Identity | null {
    const value = this.json<Identity>("identity");
    return value && typeof value.visitorId === "string" ? value : null;
  }

  setIdentity(identity: Identity): void {
    this.write("identity", JSON.stringify(identity));
  }

  /** The highest `seq` the guest has seen in this conversation (another conversation: 0). */
  seen(conversationId: string | undefined): number {
    const value = this.json<{ conversationId?: string; seq?: number }>("seen");
    return value && conversationId && value.conversationId === conversationId && typeof value.seq === "number"
      ? value.seq
      : 0;
  }

  setSeen(conversationId: string, seq: number): void {
    if (seq > this.seen(conversationId)) this.write("seen", JSON.stringify({ conversationId, seq }));
  }

  /** Unsent messages, shared by every tab of this visitor (a resend is stored only once). */
  outbox(now: number): QueuedFrame[] {
    const value = this.json<QueuedFrame[]>("outbox");
    if (!Array.isArray(value)) return [];
    return value.filter(
      (q) => q && q.frame && typeof q.frame.clientMessageId === "string" && now - q.at < OUTBOX_MAX_AGE_MS,
    );
  }

  queue(frame: OutgoingFrame, now: number): void {
    const all = this.outbox(now).filter((q) => q.frame.clientMessageId !== frame.clientMessageId);
    all.push({ frame, at: now });
    this.write("outbox", JSON.stringify(all));
  }

  unqueue(clientMessageId: string, now: number): void {
    const all = this.outbox(now);
    const rest = all.filter((q) => q.frame.clientMessageId !== clientMessageId);
    if (rest.length === all.length) return;
    if (rest.length) this.write("outbox", JSON.stringify(rest));
    else this.remove("outbox");
  }

  clearVisitor(): void {
    this.remove("identity");
    this.remove("seen");
    this.remove("outbox");
  }

  private json<T>(name: "identity" | "seen" | "outbox"): T | null {
    try {
      return JSON.parse(this.read(name) ?? "null") as T | null;
    } catch {
      return null;
    }
  }

  private read(name: "identity" | "seen" | "outbox"): string | null {
    try {
      return this.kv.getItem(this.key(name));
    } catch {
      return null;
    }
  }

  private write(name: "identity" | "seen" | "outbox", value: string): void {
    try {
      this.kv.setItem(this.key(name), value);
    } catch {
      // Full or refused: the chat goes on from memory.
    }
  }

  private remove(name: "identity" | "seen" | "outbox"): void {
    try {
      this.kv.removeItem(this.key(name));
    } catch {
      // As above.
    }
  }
}

export function memory(): KeyValue {
  const map = new Map<string, string>();
  return {
    getItem: (k) => map.get(k) ?? null,
    setItem: (k, v) => void map.set(k, v),
    removeItem: (k) => void map.delete(k),
  };
}
