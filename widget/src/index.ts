// `window.JackChat`: the SDK of the spec (init, open, close, sendMessage, identify, on) and the
// embed: with `window.JackChatConfig` set before the script loads, the widget starts by itself.

import { type ChatEvents, ChatClient, type UserIdentity } from "./client";
import type { SocketLike } from "./connection";
import { ConfigError, type WidgetConfigInput, resolveConfig, socketUrl } from "./config";
import { WidgetStorage } from "./storage";
import { Shell } from "./shell";

type Listener<K extends keyof ChatEvents> = (data: ChatEvents[K]) => void;

/** Where this script was loaded from: its server is the default API of a hotel's embed, and
 * the chat window's script (widget-chat.js) sits next to it. */
const scriptUrl = new URL((document.currentScript as HTMLScriptElement | null)?.src || `${location.origin}/widget.js`);
const scriptBase = scriptUrl.origin;

class JackChat {
  private client: ChatClient | null = null;
  private view: Shell | null = null;
  private readonly early: [keyof ChatEvents, Listener<never>][] = [];

  /** Starts the widget; a second call is ignored (one widget per page). */
  init(input: WidgetConfigInput): void {
    if (this.client) return;
    let config;
    try {
      config = resolveConfig(input, scriptBase);
    } catch (error) {
      if (error instanceof ConfigError) {
        console.error(error.message);
        return;
      }
      throw error;
    }
    const client = new ChatClient(socketUrl(config), WidgetStorage.open(config.hotelId), {
      // The DOM's WebSocket is a SocketLike; its handler types are only stricter about `this`.
      open: (url) => new WebSocket(url) as unknown as SocketLike,
      setTimeout: (callback, ms) => setTimeout(callback, ms),
      clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
      random: Math.random,
      now: Date.now,
    });
    this.client = client;
    for (const [event, listener] of this.early.splice(0)) client.events.on(event, listener as never);
    const mount = () => {
      const windowScript = new URL("widget-chat.js", scriptUrl).href;
      const view = new Shell(config, client, windowScript, (open) =>
        client.events.emit(open ? "opened" : "closed", undefined),
      );
      this.view = view;
      view.attach(document.body);
      if (config.open) void view.setOpen(true);
      // Back on the tab or the network: reconnect now, and count what the guest now sees as read.
      document.addEventListener("visibilitychange", () => {
        if (document.visibilityState === "visible") {
          client.nudge();
          view.seen(true);
        }
      });
      window.addEventListener("online", () => client.nudge());
      // Another tab read the conversation: the badge follows.
      window.addEventListener("storage", (event) => {
        if (event.key === client.storageKey("seen")) client.changes.emit("seen", Number(event.newValue) || 0);
      });
      client.start();
    };
    if (document.body) mount();
    else document.addEventListener("DOMContentLoaded", mount, { once: true });
  }

  open(): void {
    void this.view?.setOpen(true);
  }

  close(): void {
    void this.view?.setOpen(false);
  }

  /** Sends a message as the guest; returns its `clientMessageId`. */
  sendMessage(content: string): string {
    return this.started().sendText(String(content));
  }

  identify(user: UserIdentity = {}): void {
    this.started().identify(user);
  }

  /** Listens to `connected`, `disconnected`, `message`, `typing`, `message_sent`, `error`,
   * `opened` or `closed`; returns a function that stops listening. */
  on<K extends keyof ChatEvents>(event: K, listener: Listener<K>): () => void {
    if (this.client) return this.client.events.on(event, listener as never);
    const entry: [keyof ChatEvents, Listener<never>] = [event, listener as Listener<never>];
    this.early.push(entry);
    return () => {
      const at = this.early.indexOf(entry);
      if (at >= 0) this.early.splice(at, 1);
    };
  }

  private started(): ChatClient {
    if (!this.client) throw new Error("JackChat: call JackChat.init(config) first");
    return this.client;
  }
}

declare global {
  interface Window {
    JackChat?: JackChat;
    JackChatConfig?: WidgetConfigInput;
  }
}

if (!window.JackChat) {
  const sdk = new JackChat();
  window.JackChat = sdk;
  if (window.JackChatConfig) sdk.init(window.JackChatConfig);
}
