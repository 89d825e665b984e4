// One WebSocket that comes back: reconnects with exponential backoff and jitter, at once when
// nudged (the tab became visible, the network came back), never after a fatal close.
// Timers, sockets and randomness are passed in, so the state machine is tested without a
// browser.

import { FATAL_CLOSE_CODES } from "./protocol";

export interface SocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export interface ConnectionDeps {
  open(url: string): SocketLike;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  random(): number;
}

export interface ConnectionHandlers {
  /** The socket is open (the server's `connected` frame follows). */
  open(): void;
  frame(text: string): void;
  /** The socket closed; `retryIn` is null when it will not come back by itself. */
  closed(code: number, reason: string, retryIn: number | null): void;
}

export type ConnectionState = "idle" | "connecting" | "open" | "waiting" | "stopped";

export const BACKOFF_BASE_MS = 500;
export const BACKOFF_MAX_MS = 30_000;
/** A socket that has not opened by then is given up and retried. */
export const CONNECT_TIMEOUT_MS = 10_000;
const OPEN = 1;

/** The wait before reconnect attempt `attempt` (0 = the first retry): exponential, capped, with
 * "equal jitter" (half fixed, half random) so that a crowd of widgets does not come back in step. */
export function backoffDelay(attempt: number, random: number): number {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 16));
  return Math.round(ceiling / 2 + (ceiling / 2) * random);
}

export class Connection {
  state: ConnectionState = "idle";
  private socket: SocketLike | null = null;
  private timer: unknown = null;
  private attempt = 0;

  constructor(
    private readonly url: string,
    private readonly deps: ConnectionDeps,
    private readonly handlers: ConnectionHandlers,
  ) {}

  start(): void {
    if (this.state === "idle" || this.state === "stopped") this.connect();
  }

  /** Closes for good (until `start`). */
  stop(): void {
    this.state = "stopped";
    this.clearTimer();
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      detach(socket);
      socket.close(1000, "closed by the page");
    }
  }

  /** Something suggests the network is back: skip the rest of the wait. */
  nudge(): void {
    if (this.state === "waiting") {
      this.clearTimer();
      this.connect();
    }
  }

  /** The session works end to end: the next failure starts the backoff from the beginning. */
  healthy(): void {
    this.attempt = 0;
  }

  /** Drops the socket and reconnects after the usual backoff (the server misbehaved). */
  /** Starts over on a fresh socket, after at least `waitMs` when the server asked to wait. */
  restart(waitMs = 0): void {
    if (this.socket) this.lost(4999, "restart", waitMs);
  }

  send(text: string): boolean {
    if (this.state !== "open" || !this.socket || this.socket.readyState !== OPEN) return false;
    this.socket.send(text);
    return true;
  }

  private connect(): void {
    this.state = "connecting";
    let socket: SocketLike;
    try {
      socket = this.deps.open(this.url);
    } catch {
      this.handlers.closed(1006, "could not open", this.schedule());
      return;
    }
    this.socket = socket;
    this.timer = this.deps.setTimeout(() => {
      if (this.socket === socket && this.state === "connecting") this.lost(1006, "connect timeout");
    }, CONNECT_TIMEOUT_MS);
    socket.onopen = () => {
      if (this.socket !== socket) return;
      this.clearTimer();
      this.state = "open";
      this.handlers.open();
    };
    socket.onmessage = (event) => {
      if (this.socket === socket && typeof event.data === "string") this.handlers.frame(event.data);
    };
    socket.onclose = (event) => {
      if (this.socket === socket) this.lost(event.code, event.reason);
    };
    socket.onerror = () => {
      // A close event always follows; it decides what happens next.
    };
  }

  private lost(code: number, reason: string, waitMs = 0): void {
    const socket = this.socket;
    this.socket = null;
    this.clearTimer();
    if (socket) {
      detach(socket);
      try {
        socket.close();
      } catch {
        // Already closing.
      }
    }
    if (FATAL_CLOSE_CODES.has(code)) {
      this.state = "stopped";
      this.handlers.closed(code, reason, null);
      return;
    }
    this.handlers.closed(code, reason, this.schedule(waitMs));
  }

  private schedule(waitMs = 0): number {
    const delay = Math.max(backoffDelay(this.attempt++, this.deps.random()), waitMs);
    this.state = "waiting";
    this.timer = this.deps.setTimeout(() => {
      this.timer = null;
      if (this.state === "waiting") this.connect();
    }, delay);
    return delay;
  }

  private clearTimer(): void {
    if (this.timer !== null) this.deps.clearTimeout(this.timer);
    this.timer = null;
  }
}

function detach(socket: SocketLike): void {
  socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
}
