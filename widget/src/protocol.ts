// The frames of protocol v1 (services/edge/PROTOCOL.md), as the widget sees them.

export type Role = "assistant" | "staff" | "guest";

export interface QuickReply {
  label: string;
  payload: string;
}

export type Button = { type: "postback"; label: string; payload: string } | { type: "url"; label: string; url: string };

export interface Card {
  title: string;
  subtitle?: string;
  imageUrl?: string;
  buttons?: Button[];
}

export interface Attachment {
  id: string;
  filename?: string;
  contentType?: string;
  size?: number;
  /** Short-lived download URLs, as the edge sends them with stored messages. */
  url?: string;
  thumbnailUrl?: string;
  expiresAt?: string;
}

/** A stored message: it has a `seq` in its conversation and a server `messageId`. */
export interface ChatMessage {
  messageId: string;
  seq: number;
  conversationId: string;
  role: Role;
  content: string;
  quickReplies?: QuickReply[];
  buttons?: Button[];
  cards?: Card[];
  attachments?: Attachment[];
  clientMessageId?: string;
  payload?: string;
  timestamp: string;
}

export interface Limits {
  maxMessageSize: number;
  maxFileSize: number;
  /** What the upload service accepts, once the edge knows it. */
  allowedFileTypes?: string[];
  /** Frames a second the edge accepts from this connection (bursts of twice that). */
  maxFramesPerSecond?: number;
}

export type ServerFrame =
  | { type: "connected"; sessionId: string; timestamp: string; protocol?: number; limits?: Limits }
  | {
      type: "identified";
      guestId: string;
      visitorId: string;
      visitorToken: string;
      conversationId?: string;
      visitorTokenExpiresAt?: string;
    }
  | { type: "history"; conversationId?: string; messages: ChatMessage[]; hasMore?: boolean }
  | ({ type: "message" } & ChatMessage)
  | {
      type: "message_ack";
      clientMessageId: string;
      messageId: string;
      seq: number;
      conversationId: string;
      timestamp: string;
    }
  | { type: "typing"; isTyping: boolean; role: Role }
  | { type: "read"; upToSeq: number; role: Role; timestamp: string }
  | {
      type: "error";
      code: string;
      message: string;
      clientMessageId?: string;
      retryable?: boolean;
      retryAfterMs?: number;
    };

/** A guest message or postback: what the widget keeps until it is acknowledged. */
export type OutgoingFrame =
  | { type: "message"; clientMessageId: string; content: string; attachments?: Attachment[] }
  | { type: "postback"; clientMessageId: string; payload: string; label?: string; messageId?: string };

export interface IdentifyFrame {
  type: "identify";
  visitorId?: string;
  visitorToken?: string;
  name?: string;
  email?: string;
  userHash?: string;
  resumeConversation: true;
  lastSeq?: number;
}

export type ClientFrame =
  | IdentifyFrame
  | OutgoingFrame
  | { type: "typing"; isTyping: boolean }
  | { type: "read"; upToSeq: number }
  | { type: "load_history"; beforeSeq: number; limit?: number };

/** Parses a server frame; anything that is not a JSON object with a string `type` is refused. */
export function parseServerFrame(text: string): ServerFrame | null {
  try {
    const value: unknown = JSON.parse(text);
    if (value && typeof value === "object" && typeof (value as { type?: unknown }).type === "string") {
      return value as ServerFrame;
    }
  } catch {
    // Not JSON: ignored, like any frame this version does not know.
  }
  return null;
}

/** Close codes after which reconnecting cannot help. */
export const FATAL_CLOSE_CODES: ReadonlySet<number> = new Set([4000, 4001, 4004]);

/** A client message id unique across tabs and reloads. */
export function newClientMessageId(): string {
  const random =
    globalThis.crypto?.randomUUID?.() ?? `${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
  return `c_${random}`;
}

/** A first-time visitor's own id: `vis_` and 32 random hex digits. The edge binds ids of this
 * form without further proof, even at hotels that verify their guests' own ids. */
export function newVisitorId(): string {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return `vis_${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** UTF-8 length, as the edge counts `WIDGET_MAX_MESSAGE_SIZE`. */
export function utf8Length(text: string): number {
  return new TextEncoder().encode(text).length;
}
