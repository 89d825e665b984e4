// Test doubles for what the browser gives the client: sockets, timers, randomness.

import type { ConnectionDeps, SocketLike } from "../../src/connection";

export class FakeSocket implements SocketLike {
  readyState = 0;
  readonly sent: Record<string, unknown>[] = [];
  closed: { code?: number } | null = null;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;

  constructor(readonly url: string) {}

  send(data: string): void {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(JSON.parse(data));
  }

  close(code?: number): void {
    this.closed = { code };
    this.readyState = 3;
  }

  /** The server accepted the connection. */
  accept(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  /** A frame from the server. */
  receive(frame: Record<string, unknown>): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** The connection died (or the server closed it). */
  drop(code = 1006, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** Frames of this type the client sent. */
  ofType(type: string): Record<string, unknown>[] {
    return this.sent.filter((f) => f.type === type);
  }
}

/** Sockets and timers under the test's control; time moves only with `advance`. */
export class FakeWorld implements ConnectionDeps {
  readonly sockets: FakeSocket[] = [];
  time = 1_000_000;
  randomValue = 0.5;
  private timers = new Map<number, { at: number; callback: () => void }>();
  private nextTimer = 1;

  open = (url: string): FakeSocket => {
    const socket = new FakeSocket(url);
    this.sockets.push(socket);
    return socket;
  };

  setTimeout = (callback: () => void, ms: number): unknown => {
    const id = this.nextTimer++;
    this.timers.set(id, { at: this.time + ms, callback });
    return id;
  };

  clearTimeout = (handle: unknown): void => {
    this.timers.delete(handle as number);
  };

  random = (): number => this.randomValue;
  now = (): number => this.time;

  get socket(): FakeSocket {
    const last = this.sockets[this.sockets.length - 1];
    if (!last) throw new Error("no socket was opened");
    return last;
  }

  /** Runs every timer due within `ms`, in order. */
  advance(ms: number): void {
    const end = this.time + ms;
    for (;;) {
      const due = [...this.timers.entries()].filter(([, t]) => t.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      this.timers.delete(due[0]);
      this.time = due[1].at;
      due[1].callback();
    }
    this.time = end;
  }

  /** When the next timer fires, relative to now (or null). */
  nextDelay(): number | null {
    const ats = [...this.timers.values()].map((t) => t.at - this.time);
    return ats.length ? Math.min(...ats) : null;
  }
}

export function message(
  seq: number,
  fields: Record<string, unknown> = {},
): Record<string, unknown> & { messageId: string; seq: number } {
  return {
    messageId: `m${seq}`,
    seq,
    conversationId: "cnv_1",
    role: "assistant",
    content: `message ${seq}`,
    timestamp: "2026-11-26T10:00:00.000Z",
    ...fields,
  };
}
