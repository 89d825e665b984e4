// Entry of the lazy bundle, widget-chat.js: hands the chat window's factory to the page's
// shell (see shell-api.ts).

import { FACTORY, type WindowFactory } from "./shell-api";
import { ChatWindow } from "./widget";

const factory: WindowFactory = (shell) => new ChatWindow(shell);
(window as unknown as Record<string, WindowFactory>)[FACTORY] = factory;
