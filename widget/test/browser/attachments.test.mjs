// Attachments in the widget: choose a photo, see it upload and its preview, see it in the
// history after a reload; files that cannot be sent are refused with a clear message.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { EDGE, SCREENSHOTS, guestContext, launch, png, widget } from "./harness.mjs";

let browser;
before(async () => (browser = await launch()));
after(async () => browser?.close());

describe("a guest sending a photo", () => {
  test("attaches an image, sees the upload progress and the preview, and finds it again after a reload", async () => {
    const context = await guestContext(browser);
    const page = await context.newPage();
    // Hold the upload a moment, as a slow hotel Wi-Fi would, so its progress can be seen.
    await page.route("**/upload/incoming/**", async (route) => {
      await new Promise((resolve) => setTimeout(resolve, 700));
      await route.continue();
    });
    await page.goto(`${EDGE}/`);
    const w = widget(page);
    await w.open();
    await w.online();

    const photo = { name: "broken shower.png", mimeType: "image/png", buffer: png(400, 240) };
    const chooser = page.waitForEvent("filechooser");
    await w.$("button.attach").click();
    await (await chooser).setFiles(photo);
    const row = w.$(".uploads .upload").filter({ hasText: "broken shower.png" });
    await row.waitFor();
    assert.equal(await row.locator("progress").count(), 1, "a progress bar while it uploads");
    assert.equal(await row.getByRole("button", { name: "Cancel sending broken shower.png" }).count(), 1);

    // Uploaded, sent, acknowledged: the message shows the preview, then links to the file.
    const sent = w.$(".msg.guest").filter({ has: page.locator('img[alt="broken shower.png"]') });
    await sent.and(page.locator('[data-status="read"], [data-status="sent"]')).waitFor();
    await row.waitFor({ state: "detached" });
    const link = sent.locator("a.file-img");
    await page.waitForFunction((el) => el.href.includes("/files/"), await link.elementHandle());
    assert.equal(await link.getAttribute("target"), "_blank");
    await page.screenshot({ path: `${SCREENSHOTS}attachment.png` });

    // The full file is the very bytes, served with nosniff.
    const download = await page.request.get(await link.getAttribute("href"));
    assert.equal(download.status(), 200);
    assert.equal(download.headers()["x-content-type-options"], "nosniff");
    assert.deepEqual(Buffer.from(await download.body()), photo.buffer);

    // After a reload, the history shows it with the server's preview (a real image).
    await page.reload();
    await w.open();
    await w.online();
    const again = w.$('.msg.guest img[alt="broken shower.png"]');
    await again.waitFor();
    await page.waitForFunction(
      (img) => img.complete && img.naturalWidth > 0 && img.src.includes("variant=thumbnail"),
      await again.elementHandle(),
    );
    assert.equal(await w.$('.msg.guest img[alt="broken shower.png"]').count(), 1, "once");
    assert.deepEqual(context.problems, []);
    await context.close();
  });

  test("an upload cut off by the network is reported, never shown as sent, and goes on Retry", async () => {
    const context = await guestContext(browser);
    const page = await context.newPage();
    let cut = true;
    await page.route("**/upload/incoming/**", (route) => (cut ? route.abort("connectionreset") : route.continue()));
    await page.goto(`${EDGE}/`);
    const w = widget(page);
    await w.open();
    await w.online();
    await w.$("input[type=file]").setInputFiles({ name: "receipt.png", mimeType: "image/png", buffer: png(120, 80) });
    const row = w.$('.uploads .upload[data-state="failed"]');
    await row.filter({ hasText: "The connection was lost during the upload." }).waitFor();
    assert.equal(await w.$(".msg.guest").count(), 0, "nothing shown as sent");
    cut = false;
    await row.getByRole("button", { name: "Retry sending receipt.png" }).click();
    await w.$('.msg.guest img[alt="receipt.png"]').waitFor();
    await w.$(".uploads .upload").waitFor({ state: "detached" });
    await w.$('.msg.guest[data-status="read"], .msg.guest[data-status="sent"]').waitFor();
    assert.equal(await w.$(".msg.guest").count(), 1, "sent once");
    await context.close();
  });

  test("a file of the wrong type or too large is refused before anything is sent", async () => {
    const context = await guestContext(browser);
    const page = await context.newPage();
    await page.goto(`${EDGE}/`);
    const w = widget(page);
    await w.open();
    await w.online();
    const picker = w.$("input[type=file]");
    await picker.setInputFiles({
      name: "notes.html",
      mimeType: "text/html",
      buffer: Buffer.from("<script>alert(1)</script>"),
    });
    await w
      .$(".notice")
      .filter({ hasText: "notes.html: this type of file cannot be sent (PNG, JPEG, GIF, WEBP, PDF can)" })
      .waitFor();
    await picker.setInputFiles({ name: "huge.png", mimeType: "image/png", buffer: Buffer.alloc(6 * 1024 * 1024, 1) });
    await w.$(".notice").filter({ hasText: "huge.png is too large (6.0 MB; at most 5.0 MB)" }).waitFor();
    assert.equal(await w.$(".uploads .upload").count(), 0, "nothing was uploaded");
    assert.equal(await w.$(".msg.guest").count(), 0, "nothing was sent");
    await context.close();
  });
});
