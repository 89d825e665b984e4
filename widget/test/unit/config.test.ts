import assert from "node:assert/strict";
import { test } from "node:test";

import { ConfigError, resolveConfig, socketUrl } from "../../src/config";
import { INK, WHITE, contrast, parseColor, textOn } from "../../src/theme";

test("the documented embed config, completed from the script's own server", () => {
  const config = resolveConfig({ hotelId: "hotel_123", greeting: "Hello!" }, "https://chat.example");
  assert.equal(config.apiUrl, "https://chat.example");
  assert.equal(config.wsUrl, "wss://chat.example/ws/chat");
  assert.equal(config.position, "bottom-right");
  assert.equal(socketUrl(config), "wss://chat.example/ws/chat?hotelId=hotel_123");
  const explicit = resolveConfig(
    {
      hotelId: "h&1",
      apiUrl: "https://api.example/v1/",
      wsUrl: "wss://ws.example/ws/chat",
      position: "top-left",
      theme: { primaryColor: "#123", fontFamily: "Inter" },
    },
    "https://chat.example",
  );
  assert.equal(explicit.apiUrl, "https://api.example/v1");
  assert.equal(socketUrl(explicit), "wss://ws.example/ws/chat?hotelId=h%261", "the hotel id is escaped");
  assert.equal(explicit.primaryColor, "#123");
});

test("a config that cannot work says why", () => {
  assert.throws(() => resolveConfig(undefined, "https://x"), ConfigError);
  assert.throws(() => resolveConfig({}, "https://x"), /hotelId is required/);
  assert.throws(() => resolveConfig({ hotelId: "h", position: "middle" }, "https://x"), /position must be one of/);
  assert.throws(
    () => resolveConfig({ hotelId: "h", wsUrl: "https://x/ws" }, "https://x"),
    /wsUrl must start with ws: or wss:/,
  );
  assert.throws(
    () => resolveConfig({ hotelId: "h", apiUrl: "javascript:alert(1)" }, "https://x"),
    /apiUrl must start with http/,
  );
});

test("text on the hotel's colour is whichever of white or ink reads better", () => {
  assert.deepEqual(parseColor("#1a365d"), [26, 54, 93]);
  assert.deepEqual(parseColor("#fc0"), [255, 204, 0]);
  assert.deepEqual(parseColor("rgb(10, 20, 30)"), [10, 20, 30]);
  assert.equal(parseColor("papayawhip"), null);
  assert.equal(textOn([26, 54, 93]), "#ffffff", "navy gets white");
  assert.equal(textOn([255, 204, 0]), "#000000", "yellow gets ink");
  for (const colour of ["#1a365d", "#fc0", "#ff69b4", "#777777", "#00ff00", "#000", "#fff"]) {
    const rgb = parseColor(colour)!;
    const chosen = textOn(rgb) === "#ffffff" ? WHITE : INK;
    assert.ok(contrast(rgb, chosen) >= 4.5, `${colour} gets readable text (${contrast(rgb, chosen).toFixed(2)})`);
  }
});
