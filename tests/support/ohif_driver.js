// Drive OHIF in headless Chromium (playwright-core) through the steps of a plan and print a JSON
// report: per step the page's visible text, the screenshot and what the viewer logged.
//
// Plan (JSON file, argv[2]): {url, out, chromium, args, steps: [{name, path, waitText: [..],
// waitSelector, timeoutMs, settleMs, clickText}]}. A step loads url + path, waits until every
// waitText is visible in the page (or its timeout passes: the report says which were missing),
// optionally clicks the element showing clickText (or the elements of clickSelectors, in turn) and waits for
// afterClickText (clickSelectors: several, in turn), waits settleMs more for drawing, and saves <out>/<name>.png. One browser page serves all steps, so OHIF's code is fetched once.
"use strict";

const fs = require("fs");
const path = require("path");
const { chromium } = require("playwright-core");

async function visibleText(page) {
  return page.evaluate(() => document.body ? document.body.innerText : "");
}

// OHIF's first-visit tours (shepherd.js: "Skip all") cover the viewer; a radiologist dismisses
// them, here with the tour's own button or Escape.
async function dismissTours(page) {
  for (let attempt = 0; attempt < 5; attempt++) {
    const shown = await page.locator(".shepherd-modal-is-visible, .shepherd-element").count();
    if (shown === 0) return;
    const skip = page.getByText("Skip all", { exact: true });
    try {
      if (await skip.count()) await skip.first().click({ timeout: 2000 });
      else await page.keyboard.press("Escape");
    } catch (error) {
      await page.keyboard.press("Escape");
    }
    await page.waitForTimeout(300);
  }
}

async function waitForTexts(page, texts, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let missing = texts.slice();
  while (Date.now() < deadline) {
    await dismissTours(page);
    const text = await visibleText(page);
    missing = texts.filter((t) => !text.includes(t));
    if (missing.length === 0) break;
    await page.waitForTimeout(500);
  }
  return missing;
}

async function main() {
  const plan = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const browser = await chromium.launch({
    executablePath: plan.chromium,
    headless: true,
    args: plan.args,
  });
  const report = { steps: [] };
  try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    // The tour OHIF shows on a first visit: marked as seen, as after a radiologist's first day.
    await page.addInitScript(() => {
      localStorage.setItem("shownTours", JSON.stringify(["basicViewerTour"]));
    });
    let log = [];
    page.on("console", (message) => log.push(`${message.type()}: ${message.text()}`.slice(0, 500)));
    page.on("pageerror", (error) => log.push(`pageerror: ${String(error)}`.slice(0, 500)));
    for (const step of plan.steps) {
      log = [];
      const started = Date.now();
      await page.goto(plan.url + step.path, { waitUntil: "domcontentloaded", timeout: 60000 });
      const timeoutMs = step.timeoutMs || 60000;
      let missing = await waitForTexts(page, step.waitText || [], timeoutMs);
      let clicked = null;
      if ((step.clickText || step.clickSelectors) && missing.length === 0) {
        const targets = step.clickSelectors
          ? step.clickSelectors.map((selector) => page.locator(selector).first())
          : [page.getByText(step.clickText, { exact: false }).first()];
        for (let i = 0; i < targets.length; i++) {
          // A panel toggle is skipped when what it opens is already shown.
          const next = targets[i + 1];
          if (next && (await next.isVisible())) continue;
          await dismissTours(page);
          try {
            await targets[i].click({ timeout: 5000 });
          } catch (error) {
            await targets[i].click({ timeout: 5000, force: true });  // under a toast
          }
          await page.waitForTimeout(500);
        }
        clicked = step.clickSelectors || step.clickText;
        missing = await waitForTexts(page, step.afterClickText || [], timeoutMs);
      }
      if (step.waitSelector) {
        try {
          await page.waitForSelector(step.waitSelector, { timeout: timeoutMs });
        } catch (error) {
          missing.push(`selector ${step.waitSelector}`);
        }
      }
      await page.waitForTimeout(step.settleMs || 0);
      await dismissTours(page);
      const screenshot = path.join(plan.out, `${step.name}.png`);
      await page.screenshot({ path: screenshot });
      const canvases = await page.evaluate(() =>
        Array.from(document.querySelectorAll("canvas")).map((c) => [c.width, c.height]));
      report.steps.push({
        name: step.name,
        url: page.url(),
        missing,
        clicked,
        text: await visibleText(page),
        screenshot,
        canvases,
        seconds: (Date.now() - started) / 1000,
        log: log.slice(-200),
      });
    }
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(report));
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error));
  process.exit(1);
});
