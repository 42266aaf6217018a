// Headless Chromium on the demo page: the README console snippet, verbatim, then the page's UI.
// Usage: node browser.mjs http://127.0.0.1:PORT SCREENSHOT.png
// Prints one JSON line with what the snippet logged and what the chat page showed.
import { chromium } from "playwright-core";

const [base, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  const consoleLines = [];
  page.on("console", (message) => consoleLines.push(message.text()));
  await page.goto(base + "/");
  await page.waitForFunction(() => typeof io === "function", null, { timeout: 10000 });

  // The snippet exactly as README.md gives it (only the host:port differs), as pasted in the
  // console: no waiting between the emits.
  const snippet = `
const socket = io('http://localhost:8080/chat');
socket.emit('joinConsultation', { consultationId: 'test-123' });
socket.emit('sendMessage', { consultationId: 'test-123', content: 'I have a headache, what should I do?', userId: 'user-1', tenantId: 'tenant-1' });
socket.on('aiMessage', (data) => console.log('AI:', data.content));
`.replaceAll("http://localhost:8080", base);
  await page.evaluate(snippet);
  const deadline = Date.now() + 15000;
  while (!consoleLines.some((line) => line.startsWith("AI:")) && Date.now() < deadline) {
    await page.waitForTimeout(100);
  }

  // The page itself: connect, join, send, watch the streamed answer land in the log.
  await page.fill("#consultation", "page-room");
  await page.click("#connect");
  await page.waitForSelector("text=Joined page-room.", { timeout: 10000 });
  await page.fill("#content", "Is this page working?");
  await page.press("#content", "Enter");
  await page.waitForSelector(".msg.assistant >> text=/Is this page working\\?/", { timeout: 15000 });
  const logText = await page.textContent("#log");
  await page.screenshot({ path: screenshot, fullPage: true });
  process.stdout.write(JSON.stringify({
    consoleLines: consoleLines.filter((line) => line.startsWith("AI:")),
    logText,
    status: await page.textContent("#status"),
  }) + "\n");
} finally {
  await browser.close();
}
