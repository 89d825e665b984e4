import assert from "node:assert/strict";
import { test } from "node:test";

import { DEFAULT_TYPES, formatSize, refuseFile } from "../../src/uploads";

test("files are checked before anything is sent, with a message a guest understands", () => {
  const max = 5 * 1024 * 1024;
  assert.equal(refuseFile({ name: "room.jpg", size: 120_000, type: "image/jpeg" }, max, DEFAULT_TYPES), null);
  assert.equal(refuseFile({ name: "menu.pdf", size: 120_000, type: "application/pdf" }, max, DEFAULT_TYPES), null);
  assert.equal(
    refuseFile({ name: "page.html", size: 10, type: "text/html" }, max, DEFAULT_TYPES),
    "page.html: this type of file cannot be sent (PNG, JPEG, GIF, WEBP, PDF can).",
  );
  assert.equal(
    refuseFile({ name: "IMG_1.heic", size: 10, type: "image/heic" }, max, ["image/heic"]),
    null,
    "the server's list decides",
  );
  assert.equal(
    refuseFile({ name: "logo.svg", size: 10, type: "image/svg+xml" }, max, DEFAULT_TYPES)?.includes("cannot be sent"),
    true,
  );
  assert.equal(
    refuseFile({ name: "big.png", size: 6 * 1024 * 1024, type: "image/png" }, max, DEFAULT_TYPES),
    "big.png is too large (6.0 MB; at most 5.0 MB).",
  );
  assert.equal(
    refuseFile({ name: "empty.png", size: 0, type: "image/png" }, max, DEFAULT_TYPES),
    "empty.png is empty.",
  );
  assert.deepEqual([formatSize(900), formatSize(2048), formatSize(1_572_864)], ["900 B", "2 KB", "1.5 MB"]);
});
