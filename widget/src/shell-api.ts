// What the page-side shell (the loader bundle, widget.js) and the chat window (the lazy
// bundle, widget-chat.js) know of each other. Types only: the two bundles share no code at
// run time, just this contract and the objects passed through it.

import type { ChatClient } from "./client";
import type { WidgetConfig } from "./config";

export interface ShellApi {
  readonly config: WidgetConfig;
  readonly client: ChatClient;
  readonly shadow: ShadowRoot;
  /** Where the window goes (before the launcher). */
  readonly root: HTMLElement;
  readonly launcher: HTMLElement;
  isOpen(): boolean;
  close(): void;
  /** The guest may have seen new messages: report them read when the window is open and the
   * tab visible (once per burst, or `now`). */
  seen(now?: boolean): void;
}

export interface ChatWindowApi {
  /** The window was just shown. */
  opened(): void;
}

/** The lazy bundle hands its window factory over through this global, once. */
export const FACTORY = "__jackChatWindow";
export type WindowFactory = (shell: ShellApi) => ChatWindowApi;
