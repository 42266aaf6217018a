// Headless Chromium on the operator console and the chat page at desktop and phone sizes:
// nothing overflows the viewport (the header and the reply box stay in view while typing),
// a reload with two held consultations shows exactly one, canned replies insert.
//   node console.mjs BASE_URL SCREENSHOT_DIR CONSULTATION_A CONSULTATION_B
import { launch } from "./chromium.mjs";

const [base, shots, first, second] = process.argv.slice(2);
const seen = { pageErrors: [], overflow: {} };
const step = (name) => { seen.lastStep = name; };

const browser = await launch();

// What sticks out of the viewport: the page itself (a horizontal scrollbar), or one of the
// elements that must always be in view.
const overflow = (page, ids) => page.evaluate((ids) => {
  const out = [];
  const vw = window.innerWidth, vh = window.innerHeight;
  if (document.documentElement.scrollWidth > vw + 1) out.push("page is wider than the viewport");
  if (document.documentElement.scrollHeight > vh + 1) out.push("page is taller than the viewport");
  for (const selector of ids) {
    const node = document.querySelector(selector);
    if (!node) { out.push(selector + " missing"); continue; }
    const r = node.getBoundingClientRect();
    if (r.top < -1 || r.left < -1 || r.bottom > vh + 1 || r.right > vw + 1) out.push(selector + " " + JSON.stringify([r.left, r.top, r.right, r.bottom]));
  }
  return out;
}, ids);

async function open(url, viewport) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.on("pageerror", (error) => seen.pageErrors.push(error.message));
  page.setDefaultTimeout(15000);
  await page.goto(url);
  await page.waitForSelector("#status.ok");
  return page;
}

try {
  step("console");
  const console_ = await open(base + "/operator", { width: 1280, height: 720 });
  await console_.click("#settings summary");
  await console_.fill("#user-id", "op-dana");
  await console_.fill("#name", "Dana");
  await console_.click("#apply");
  await console_.waitForSelector("#me >> text=op-dana");
  await console_.waitForSelector("#status.ok");
  await console_.click("#settings summary"); // closed again
  for (const id of [first, second]) {
    const item = console_.locator("#queue .item.queued", { hasText: id });
    await item.waitFor();
    seen.preview = seen.preview || await item.locator(".preview").textContent();
    await item.locator(".accept").click();
    await console_.waitForSelector(`.log[data-consultation="${id}"] .msg[data-id]`);
  }
  await console_.locator("#mine .item", { hasText: first }).click();

  step("canned");
  await console_.fill("#content", "");
  await console_.type("#content", "/gre");
  await console_.waitForSelector("#canned:not([hidden]) li");
  seen.cannedOptions = await console_.locator("#canned li").count();
  await console_.press("#content", "Enter");
  seen.inserted = await console_.inputValue("#content");
  seen.overflow.consoleDesktopTyping = await overflow(console_, ["header", "#content", "#send", "#chat-title"]);
  await console_.screenshot({ path: shots + "/console-desktop.png" });
  await console_.fill("#content", "");

  step("alt+down");
  await console_.focus("#content");
  await console_.keyboard.press("Alt+ArrowDown");
  seen.afterAltDown = await console_.locator("#mine .item.selected").getAttribute("data-id");

  step("reload");
  await console_.reload();
  await console_.waitForSelector("#status.ok");
  await console_.waitForFunction(() => document.querySelectorAll("#mine .item").length === 2);
  await console_.waitForFunction(() => [...document.querySelectorAll("#logs .log")].filter((n) => !n.hidden).length === 1);
  seen.visibleLogs = await console_.evaluate(() => [...document.querySelectorAll("#logs .log")].filter((n) => !n.hidden).map((n) => n.dataset.consultation));
  seen.selectedAfterReload = await console_.locator("#mine .item.selected").getAttribute("data-id");

  step("escape");
  await console_.keyboard.press("Escape");
  seen.visibleAfterEscape = await console_.evaluate(() => [...document.querySelectorAll("#logs .log")].filter((n) => !n.hidden).length);

  step("console full hd");
  const wide = await open(base + "/operator", { width: 1920, height: 1080 });
  seen.overflow.consoleFullHd = await overflow(wide, ["header", "#content", "#send"]);

  step("console phone");
  const phone = await open(base + "/operator", { width: 390, height: 844 });
  seen.overflow.consolePhone = await overflow(phone, ["header", "#content", "#send"]);
  await phone.screenshot({ path: shots + "/console-mobile.png" });

  step("chat page");
  for (const [name, viewport] of [["desktop", { width: 1280, height: 720 }], ["mobile", { width: 390, height: 844 }]]) {
    const page = await open(base + "/", viewport);
    await page.focus("#content");
    await page.type("#content", "typing a question on a " + name + " screen");
    seen.overflow["chat-" + name] = await overflow(page, ["header", "#content", "#send", "#human"]);
    await page.screenshot({ path: shots + "/chat-" + name + ".png" });
  }
  step("done");
} catch (error) {
  seen.failure = String(error && error.stack || error);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(seen) + "\n");
