// Headless Chromium on the pages: the README console snippet (verbatim), the chat page (send,
// streamed Markdown reply, Stop, reload), then a handoff between the chat page and the operator
// console, all with the CDN unreachable. Usage:
//   node browser.mjs BASE_URL FALLBACK_BASE_URL SCREENSHOT_DIR
// BASE_URL serves the local socket.io-client bundle first; FALLBACK_BASE_URL names the CDN first
// and must fall back to the local bundle. Prints one JSON line with what the pages showed.
import { launch } from "./chromium.mjs";
import { readmeSnippet } from "./readme.mjs";

const [base, fallbackBase, shots] = process.argv.slice(2);
const seen = { cdnRequests: [], pageErrors: [], cspViolations: [], csp: {} };
const step = (name) => { seen.lastStep = name; };

const browser = await launch();

async function open(url) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  await context.route(/cdn\.socket\.io/, (route) => { seen.cdnRequests.push(route.request().url()); return route.abort(); });
  const page = await context.newPage();
  page.on("pageerror", (error) => seen.pageErrors.push(error.message));
  // Chromium reports every blocked script, style or connection in the console.
  page.on("console", (message) => {
    if (/Content Security Policy/i.test(message.text())) seen.cspViolations.push(message.text());
  });
  page.setDefaultTimeout(15000);
  const response = await page.goto(url);
  seen.csp[new URL(url).pathname] = response.headers()["content-security-policy"] || null;
  await page.waitForSelector("#status.ok");
  return page;
}

const bubbles = (page) => page.$$eval("#log .msg[data-id]", (nodes) =>
  nodes.map((n) => ({ id: n.dataset.id, seq: Number(n.dataset.seq), cls: n.className, text: (n.querySelector(".body") || n).textContent })));

try {
  step("load");
  const page = await open(base + "/");
  seen.greeting = await page.locator("#log .msg.system").first().textContent();
  const consoleLines = [];
  page.on("console", (message) => consoleLines.push(message.text()));

  step("snippet");
  await page.evaluate(readmeSnippet().replaceAll("http://localhost:8080", base));
  await page.waitForFunction(() => true);
  for (const deadline = Date.now() + 15000; !consoleLines.some((l) => l.startsWith("AI:")) && Date.now() < deadline;) {
    await page.waitForTimeout(100);
  }
  seen.snippetLines = consoleLines.filter((l) => l.startsWith("AI:") || l.startsWith("Error:") || l.startsWith("Cannot"));

  step("markdown");
  await page.fill("#content", "Please format **this** <script>window.pwned = 1</script>");
  await page.press("#content", "Enter");
  await page.waitForSelector(".msg.assistant.streaming"); // it streams in
  const reply = page.locator(".msg.assistant:not(.streaming)", { hasText: "Echo: Please format" });
  await reply.waitFor();
  seen.bold = await reply.locator("strong").textContent();
  seen.replyText = await reply.locator(".body").textContent();
  seen.pwned = await page.evaluate(() => window.pwned === undefined ? null : window.pwned);
  seen.scriptsInLog = await page.evaluate(() => document.querySelectorAll("#log script").length);

  step("stop");
  const long = Array.from({ length: 60 }, (_, i) => "word" + i).join(" ");
  await page.fill("#content", long);
  await page.press("#content", "Enter");
  await page.waitForSelector(".msg.assistant.streaming");
  await page.waitForSelector("#stop:not([hidden])");
  await page.click("#stop");
  await page.waitForSelector(".msg.assistant .status >> text=stopped");
  await page.waitForSelector("#stop", { state: "hidden" });
  seen.beforeReload = await bubbles(page);

  step("reload");
  await page.reload();
  await page.waitForSelector("#status.ok");
  await page.waitForFunction((n) => document.querySelectorAll("#log .msg[data-id]").length >= n, seen.beforeReload.length);
  seen.afterReload = await bubbles(page);
  seen.consultationId = await page.evaluate(() => localStorage.getItem("consultation.id"));
  seen.userId = await page.evaluate(() => localStorage.getItem("consultation.userId"));

  step("operator console");
  const console_ = await open(base + "/operator");
  await console_.click("#settings summary");
  await console_.fill("#user-id", "op-dana");
  await console_.fill("#name", "Dana");
  await console_.click("#apply");
  await console_.waitForSelector("#me >> text=op-dana");
  await console_.waitForSelector("#status.ok");

  step("cancel");
  // Cancel on the dialog sends nothing: had it asked, the queued request below would carry
  // no reason (a consultation waits once), and the console shows the reason.
  page.on("dialog", (dialog) => { seen.nativeDialogs = (seen.nativeDialogs || 0) + 1; dialog.dismiss(); });
  await page.click("#human");
  await page.fill("#human-reason", "typed, then cancelled");
  await page.click("#human-cancel");
  await page.waitForSelector("#human-dialog", { state: "hidden" });

  step("request");
  await page.click("#human");
  await page.fill("#human-reason", "I want a person");
  await page.click("#human-confirm");
  await page.waitForSelector("#banner >> text=/Waiting for a human operator/");
  const queued = console_.locator("#queue .item.queued", { hasText: seen.consultationId });
  await queued.waitFor();
  seen.queueItem = await queued.textContent();

  step("accept");
  await queued.locator(".accept").click();
  await page.waitForSelector("#banner >> text=/Dana from support is with you/");
  // The accept's history lands in the console's log after the user's banner may show: wait.
  const historySelector = `.log[data-consultation="${seen.consultationId}"] .msg[data-id]`;
  await console_.waitForFunction((sel) => document.querySelectorAll(sel).length >= 4, historySelector);
  seen.operatorHistory = await console_.$$eval(historySelector, (n) => n.length);
  seen.mine = await console_.textContent("#mine");

  step("typing");
  await page.type("#content", "still there?");
  await console_.waitForSelector("#indicator >> text=/is typing/");
  seen.operatorIndicator = await console_.textContent("#indicator");
  await page.fill("#content", "");

  step("operator writes");
  await console_.fill("#content", "Hello, I am Dana from support.");
  await console_.press("#content", "Enter");
  const operatorBubble = page.locator(".msg.operator", { hasText: "Hello, I am Dana" });
  await operatorBubble.waitFor();
  seen.operatorBubble = await operatorBubble.textContent();

  step("user answers");
  await page.fill("#content", "Thank you Dana");
  await page.press("#content", "Enter");
  await console_.locator(".msg.other", { hasText: "Thank you Dana" }).waitFor();

  step("release");
  await console_.click("#release");
  await page.waitForSelector("#mode >> text=assistant");
  seen.finalLog = await bubbles(page);

  step("rating");
  // Handed back: the page asks for a rating, stored with the consultation.
  await page.waitForSelector("#rating:not([hidden])");
  await page.click("#stars [role=radio]:nth-child(4)");
  await page.fill("#rating-comment", "Dana was great");
  await page.click("#rating-send");
  await page.waitForSelector(".msg.system >> text=Thank you for your rating.");
  await page.screenshot({ path: shots + "/chat.png", fullPage: true });
  await console_.screenshot({ path: shots + "/operator.png", fullPage: true });

  step("fallback");
  const fallback = await open(fallbackBase + "/");
  seen.fallbackStatus = await fallback.textContent("#status");
  step("done");
} catch (error) {
  seen.failure = String(error && error.stack || error);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(seen) + "\n");
