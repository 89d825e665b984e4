// `window.JackChatConfig`, as the embed code writes it, checked and completed.

export type Position = "bottom-right" | "bottom-left" | "top-right" | "top-left";

export interface WidgetConfigInput {
  hotelId?: unknown;
  apiUrl?: unknown;
  wsUrl?: unknown;
  theme?: { primaryColor?: unknown; fontFamily?: unknown };
  position?: unknown;
  greeting?: unknown;
  /** The name shown in the header ("Jack"). */
  botName?: unknown;
  placeholder?: unknown;
  /** For a page whose CSP allows styles only with a nonce (older browsers without constructable stylesheets). */
  nonce?: unknown;
  /** Open the chat window at start. */
  open?: unknown;
}

export interface WidgetConfig {
  hotelId: string;
  apiUrl: string;
  wsUrl: string;
  primaryColor?: string;
  fontFamily?: string;
  position: Position;
  greeting?: string;
  botName: string;
  placeholder: string;
  nonce?: string;
  open: boolean;
}

const POSITIONS: Position[] = ["bottom-right", "bottom-left", "top-right", "top-left"];

/** A readable reason, for the console, when the config cannot work. */
export class ConfigError extends Error {}

const text = (value: unknown): string | undefined =>
  typeof value === "string" && value.trim() ? value.trim() : undefined;

/**
 * `base` is the origin the widget script came from: the default API and WebSocket address, so a
 * hotel that embeds `https://chat.example/widget.js` needs nothing else.
 */
export function resolveConfig(input: WidgetConfigInput | undefined, base: string): WidgetConfig {
  if (!input || typeof input !== "object")
    throw new ConfigError(
      'JackChat: no config; set window.JackChatConfig = { hotelId: "…" } or call JackChat.init({ hotelId: "…" })',
    );
  const hotelId = text(input.hotelId);
  if (!hotelId) throw new ConfigError("JackChat: config.hotelId is required");
  const apiUrl = absolute(text(input.apiUrl) ?? base, base, "apiUrl", ["http:", "https:"]).replace(/\/+$/, "");
  const wsDefault = apiUrl.replace(/^http/, "ws") + "/ws/chat";
  const wsUrl = absolute(text(input.wsUrl) ?? wsDefault, base, "wsUrl", ["ws:", "wss:"]);
  const position = text(input.position) ?? "bottom-right";
  if (!POSITIONS.includes(position as Position))
    throw new ConfigError(`JackChat: config.position must be one of ${POSITIONS.join(", ")}`);
  const theme = input.theme && typeof input.theme === "object" ? input.theme : {};
  return {
    hotelId,
    apiUrl,
    wsUrl,
    primaryColor: text(theme.primaryColor),
    fontFamily: text(theme.fontFamily),
    position: position as Position,
    greeting: text(input.greeting),
    botName: text(input.botName) ?? "Jack",
    placeholder: text(input.placeholder) ?? "Type your message...",
    nonce: text(input.nonce),
    open: input.open === true,
  };
}

function absolute(value: string, base: string, name: string, protocols: string[]): string {
  let url: URL;
  try {
    url = new URL(value, base);
  } catch {
    throw new ConfigError(`JackChat: config.${name} is not a URL: ${value}`);
  }
  if (!protocols.includes(url.protocol))
    throw new ConfigError(`JackChat: config.${name} must start with ${protocols.join(" or ")}`);
  return url.href.replace(/\/$/, url.pathname === "/" ? "" : "/");
}

/** The WebSocket address for a hotel. */
export function socketUrl(config: WidgetConfig): string {
  const url = new URL(config.wsUrl);
  url.searchParams.set("hotelId", config.hotelId);
  return url.href;
}
