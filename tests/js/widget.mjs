// Headless Chromium on the website widget: a host page on another origin, under a strict CSP,
// with the one-tag embed. Usage:
//   node widget.mjs CONFIG_JSON SCREENSHOT_DIR
// CONFIG_JSON: {host, other, foreign, server, operatorToken}. host/other: two pages of the
// embedding site; foreign: a site the key does not name. Prints one JSON line of what was seen.
import { launch } from "./chromium.mjs";

const [configJson, shots] = process.argv.slice(2);
const config = JSON.parse(configJson);
const seen = { pageErrors: [], cspViolations: [], frameBlocked: [] };
const step = (name) => { seen.lastStep = name; };

const browser = await launch();

function watch(page) {
  page.on("pageerror", (error) => seen.pageErrors.push(error.message));
  page.on("console", (message) => {
    const text = message.text();
    if (/frame-ancestors/i.test(text)) seen.frameBlocked.push(text);
    else if (/Content Security Policy/i.test(text)) seen.cspViolations.push(text);
  });
  page.setDefaultTimeout(15000);
  return page;
}

const launcher = (page) => page.locator('button[data-consultation-widget="launcher"]');
const chat = (page) => page.frameLocator('iframe[title="Chat"]');
const bubbles = (page) => chat(page).locator("#log .msg[data-id]").evaluateAll((nodes) =>
  nodes.map((n) => ({ cls: n.className, text: (n.querySelector(".body") || n).textContent })));

try {
  step("load");
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = watch(await context.newPage());
  await page.goto(config.host);
  await launcher(page).waitFor();
  seen.launcherLabel = await launcher(page).getAttribute("aria-label");
  seen.framesBeforeOpen = await page.locator("iframe").count();
  await page.screenshot({ path: shots + "/widget-closed.png" });

  step("open");
  await launcher(page).click();
  const frame = chat(page);
  await frame.locator("#status.ok").waitFor();
  seen.expanded = await launcher(page).getAttribute("aria-expanded");
  seen.greeting = await frame.locator("#log .msg.system").first().textContent();
  seen.focused = await frame.locator("#content").evaluate((node) => document.activeElement === node);

  step("ask");
  await frame.locator("#content").fill("Which tours leave on **Monday**?");
  await frame.locator("#content").press("Enter");
  await frame.locator(".msg.assistant.streaming").waitFor();
  seen.thinking = await frame.locator("#indicator").textContent();
  const reply = frame.locator(".msg.assistant:not(.streaming)", { hasText: "Echo: Which tours" });
  await reply.waitFor();
  seen.replyBold = await reply.locator("strong").textContent();
  seen.sourceLink = await reply.locator(".sources a").getAttribute("href");
  seen.sourceTitle = await reply.locator(".sources a").textContent();
  seen.beforeReload = await bubbles(page);
  await page.screenshot({ path: shots + "/widget-open.png" });

  step("reload");
  await page.reload();
  await launcher(page).waitFor();
  seen.framesAfterReload = await page.locator("iframe").count(); // resumed: loaded before opening
  await launcher(page).click();
  await chat(page).locator("#status.ok").waitFor();
  await chat(page).locator(".msg.assistant", { hasText: "Echo: Which tours" }).waitFor();
  seen.afterReload = await bubbles(page);

  step("other page");
  await page.goto(config.other);
  await launcher(page).click();
  await chat(page).locator(".msg.assistant", { hasText: "Echo: Which tours" }).waitFor();
  seen.otherPage = await bubbles(page);

  step("context");
  await page.evaluate(() => window.ConsultationWidget.setContext({ attributes: { tour: "Lake Bled", seatsLeft: 4 } }));
  await chat(page).locator("#content").fill("Four people, please");
  await chat(page).locator("#content").press("Enter");
  await chat(page).locator(".msg.assistant", { hasText: "Echo: Four people" }).waitFor();

  step("operator console");
  const operatorContext = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const console_ = watch(await operatorContext.newPage());
  await console_.goto(config.server + "/operator");
  await console_.click("#settings summary");
  await console_.fill("#token", config.operatorToken);
  await console_.click("#apply");
  await console_.waitForSelector("#status.ok");

  step("talk to a human");
  const widget = chat(page);
  await widget.locator("#human").click();
  await widget.locator("#human-cancel").click(); // Cancel asks nothing
  await widget.locator("#human").click();
  await widget.locator("#human-reason").fill("I want to book for four people");
  await widget.locator("#human-confirm").click();
  await widget.locator("#banner", { hasText: "Waiting for a person" }).waitFor();
  const queued = console_.locator("#queue .item.queued", { hasText: "I want to book for four people" });
  await queued.waitFor();
  seen.queueItem = await queued.textContent();
  seen.queuePage = await queued.locator("a.page").getAttribute("href");
  seen.queuePageTitle = await queued.locator("a.page").textContent();
  seen.queueVisitor = await queued.locator(".pill", { hasText: "visitor" }).count();
  seen.queuedCount = await console_.locator("#queue .item.queued").count();

  step("accept");
  await queued.locator(".accept").click();
  await widget.locator("#banner", { hasText: "Dana from our team is with you" }).waitFor();
  // Each reader's wording of the same notes.
  await console_.locator(".msg.system", { hasText: "The customer asked for a human." }).waitFor();
  await console_.locator(".msg.system", { hasText: "You joined the consultation." }).waitFor();
  seen.visitorNote = await widget.locator(".msg.system", { hasText: "You asked for a human" }).count();
  seen.title = await widget.locator("#title").textContent();

  step("unread");
  await widget.locator("#close").click(); // the panel closes; the conversation goes on
  await page.locator('iframe[title="Chat"]').waitFor({ state: "hidden" });
  seen.closedByButton = true;
  await console_.fill("#content", "Hello, I am Dana. Four people is fine.");
  await console_.press("#content", "Enter");
  const badge = page.locator('[data-consultation-widget="badge"]');
  await badge.filter({ hasText: "1" }).waitFor();
  seen.badge = await badge.textContent();
  seen.unreadLabel = await launcher(page).getAttribute("aria-label");
  await launcher(page).click();
  await widget.locator(".msg.operator", { hasText: "Hello, I am Dana" }).waitFor();
  seen.operatorBubble = await widget.locator(".msg.operator").last().textContent();
  seen.badgeAfterOpen = await badge.isVisible();

  step("rating");
  await console_.click("#close"); // an in-page question, not confirm()
  await console_.click("#close-confirm");
  await widget.locator("#rating").waitFor();
  await widget.locator('#stars [role="radio"]').nth(3).click();
  await widget.locator("#rating-comment").fill("Quick and kind");
  await widget.locator("#rating-send").click();
  await widget.locator("#rating-question", { hasText: "Thank you" }).waitFor();
  seen.rated = true;

  step("insights");
  await console_.click("#insights summary");
  await console_.locator("#insights-body .unanswered").waitFor();
  seen.insights = await console_.locator("#insights-body").textContent();

  step("identify");
  // The visitor signs in on the site: the site hands the widget its user token.
  seen.identified = await page.evaluate((token) => window.ConsultationWidget.identify(token), config.userToken);
  await widget.locator("#status.ok").waitFor();
  await widget.locator(".msg.operator", { hasText: "Hello, I am Dana" }).waitFor(); // history kept
  seen.mineAfterIdentify = await widget.locator(".msg.mine").count();

  step("escape");
  await widget.locator("#content").press("Escape");
  await page.locator('iframe[title="Chat"]').waitFor({ state: "hidden" });
  seen.focusAfterEscape = await page.evaluate(() => document.activeElement && document.activeElement.dataset.consultationWidget);

  step("mobile");
  const phone = await browser.newContext({ viewport: { width: 390, height: 780 }, isMobile: true, hasTouch: true });
  const mobile = watch(await phone.newPage());
  await mobile.goto(config.host);
  await launcher(mobile).click();
  await chat(mobile).locator("#status.ok").waitFor();
  seen.mobileFrame = await mobile.locator('iframe[title="Chat"]').boundingBox();
  seen.mobileLauncherHidden = await launcher(mobile).isHidden();
  await mobile.screenshot({ path: shots + "/widget-mobile.png" });

  step("russian");
  const russian = watch(await browser.newContext({ locale: "ru-RU" }).then((c) => c.newPage()));
  await russian.goto(config.host);
  seen.russianLabel = await launcher(russian).getAttribute("aria-label");
  await launcher(russian).click();
  await chat(russian).locator("#status.ok").waitFor();
  seen.russianSend = await chat(russian).locator("#send").textContent();

  step("foreign site");
  const foreign = watch(await (await browser.newContext()).newPage());
  await foreign.goto(config.foreign);
  await launcher(foreign).click();
  for (let i = 0; i < 50 && !seen.frameBlocked.length; i++) await foreign.waitForTimeout(100);
  step("done");
} catch (error) {
  seen.failure = String(error && error.stack || error);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(seen) + "\n");
