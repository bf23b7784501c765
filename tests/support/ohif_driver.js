// Drive OHIF in headless Chromium (playwright-core) through the steps of a plan and print a JSON
// report: per step the page's visible text, the screenshot and what the viewer logged.
//
// Plan (JSON file, argv[2]): {url, out, chromium, args, steps: [{name, path, waitText: [..],
// waitSelector, waitLoaded, timeoutMs, settleMs, clickText, clickSelectors, afterClickText,
// geometry, squareViewport}]}. A step loads url + path and waits until every waitText is visible
// in the page (or its timeout passes: the report says which were missing). With waitLoaded it
// then waits until a Cornerstone viewport shows a loaded image. It optionally clicks the element
// showing clickText, or the elements of clickSelectors in turn (each once it is attached and
// enabled), and waits for afterClickText. It waits settleMs more for drawing and saves
// <out>/<name>.png. With squareViewport the page is first resized so that the viewport is
// square (the image then fills it: the tightest case for the viewer's corner text). With
// geometry the report holds the boxes of OHIF's own overlays (corner text, orientation markers,
// action-corner icons, cine player) and, per viewport, where the image's edges lie on the page.
// One browser page serves all steps, so OHIF's code is fetched once.
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

// Whether a Cornerstone viewport shows a loaded image (OHIF exposes cornerstone on window).
function viewportShowsImage() {
  const cs = window.cornerstone;
  if (!cs || !cs.getEnabledElements) return false;
  return cs.getEnabledElements().some((enabled) => {
    const viewport = enabled.viewport;
    const imageId = viewport && viewport.getCurrentImageId && viewport.getCurrentImageId();
    return Boolean(imageId && cs.cache.getImage(imageId));
  });
}

async function waitLoaded(page, timeoutMs) {
  try {
    await page.waitForFunction(viewportShowsImage, null, { timeout: timeoutMs, polling: 250 });
    return true;
  } catch (error) {
    return false;
  }
}

// What OHIF draws over the image, in page pixels [left, top, right, bottom]: each corner's
// overlay text and each orientation marker, with the boxes of the text lines it shows, and the
// action corners' icons and the cine player (their whole boxes); per viewport, its image and
// where the image's outer edges lie on the page (Cornerstone's own image-to-canvas transform;
// its image coordinates are pixel edges, 0..columns, 0..rows).
function probeGeometry() {
  const box = (r) => [r.left, r.top, r.right, r.bottom];
  const textBoxes = (element) => {
    const boxes = [];
    const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (!node.textContent.trim()) continue;
      const range = document.createRange();
      range.selectNodeContents(node);
      for (const r of range.getClientRects()) if (r.width > 0 && r.height > 0) boxes.push(box(r));
    }
    return boxes;
  };
  const overlays = [];
  for (const element of document.querySelectorAll(".viewport-overlay, .orientation-marker")) {
    const style = getComputedStyle(element);
    if (style.display === "none" || style.visibility === "hidden") continue;
    const marker = Array.from(element.classList).find((name) => name.endsWith("-mid"));
    overlays.push({
      kind: element.dataset.cy || marker || element.className,
      text: element.innerText,
      box: box(element.getBoundingClientRect()),
      textBoxes: textBoxes(element),
    });
  }
  // OHIF's viewport action corners (icon buttons: layers, data overlays, window presets),
  // told apart only by their Tailwind position classes (OHIF's ViewportActionCorners).
  const actionCorners = {
    "top-left": '[class~="top-[4px]"][class~="left-[0px]"]',
    "top-right": '[class~="top-[4px]"].right-viewport-scrollbar',
    "bottom-left": '[class~="bottom-[3px]"][class~="left-[0px]"]',
    "bottom-right": '[class~="bottom-[3px]"].right-viewport-scrollbar',
    "top-middle": '[class~="top-[25px]"][class~="left-1/2"]',
    "bottom-middle": '[class~="bottom-[3px]"][class~="left-1/2"]',
    "left-middle": '[class~="left-[20px]"]',
    "right-middle": '[class~="top-1/2"].right-viewport-scrollbar',
  };
  for (const [where, position] of Object.entries(actionCorners)) {
    const selector = `.pointer-events-auto.flex.absolute${position}`;
    for (const element of document.querySelectorAll(selector)) {
      const r = element.getBoundingClientRect();
      if (r.width === 0 || r.height === 0) continue;
      overlays.push({
        kind: `action-corner-${where}`,
        text: element.innerText,
        box: box(r),
        textBoxes: [box(r)],
      });
    }
  }
  // OHIF's cine player (frame rate and play controls), shown at the viewport's top middle.
  for (const element of document.querySelectorAll(".bg-muted.inline-flex")) {
    if (!element.innerText.includes("FPS")) continue;
    overlays.push({
      kind: "cine-player",
      text: element.innerText,
      box: box(element.getBoundingClientRect()),
      textBoxes: [box(element.getBoundingClientRect())],
    });
  }
  const viewports = [];
  const cs = window.cornerstone;
  for (const enabled of cs ? cs.getEnabledElements() : []) {
    const viewport = enabled.viewport;
    const imageId = viewport.getCurrentImageId && viewport.getCurrentImageId();
    const image = imageId && cs.cache.getImage(imageId);
    if (!image) continue;
    const canvas = viewport.canvas.getBoundingClientRect();
    const onPage = (x, y) => {
      const point = viewport.worldToCanvas(cs.utilities.imageToWorldCoords(imageId, [x, y]));
      return [canvas.left + point[0], canvas.top + point[1]];
    };
    viewports.push({
      imageId,
      rows: image.rows,
      columns: image.columns,
      canvas: box(canvas),
      imageTopLeft: onPage(0, 0),
      imageBottomRight: onPage(image.columns, image.rows),
    });
  }
  return { overlays, viewports, devicePixelRatio: window.devicePixelRatio };
}

// Resize the page so that the (first) viewport's canvas is square, keeping the page's height.
async function squareTheViewport(page, timeoutMs) {
  const canvas = await page.evaluate(() => {
    const c = document.querySelector("canvas.cornerstone-canvas");
    if (!c) return null;
    const r = c.getBoundingClientRect();
    return [r.width, r.height];
  });
  if (!canvas) return false;
  const size = page.viewportSize();
  const width = Math.round(size.width - (canvas[0] - canvas[1]));
  await page.setViewportSize({ width, height: size.height });
  // Cornerstone re-fits the image on resize; wait until the canvas is square.
  try {
    await page.waitForFunction(() => {
      const c = document.querySelector("canvas.cornerstone-canvas");
      const r = c && c.getBoundingClientRect();
      return r && Math.abs(r.width - r.height) <= 2;
    }, null, { timeout: timeoutMs, polling: 250 });
    return true;
  } catch (error) {
    return false;
  }
}

// Click a panel toggle or button once it is shown and enabled, however long a loaded machine
// takes to get there (one 5 s try timed out once); a toast that covers it is clicked through.
async function clickWhenReady(page, target, timeoutMs) {
  await target.waitFor({ state: "visible", timeout: timeoutMs });
  const handle = await target.elementHandle({ timeout: timeoutMs });
  await page.waitForFunction(
    (element) => element.isConnected && !element.disabled &&
      element.getAttribute("aria-disabled") !== "true",
    handle,
    { timeout: timeoutMs, polling: 250 },
  );
  try {
    await target.click({ timeout: timeoutMs });
  } catch (error) {
    await target.click({ timeout: 5000, force: true });
  }
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
    const pageSize = page.viewportSize();
    for (const step of plan.steps) {
      log = [];
      await page.setViewportSize(pageSize);  // a squareViewport step resized it
      const started = Date.now();
      await page.goto(plan.url + step.path, { waitUntil: "domcontentloaded", timeout: 60000 });
      const timeoutMs = step.timeoutMs || 60000;
      let missing = await waitForTexts(page, step.waitText || [], timeoutMs);
      let loaded = null;
      if (step.waitLoaded && missing.length === 0) {
        loaded = await waitLoaded(page, timeoutMs);
        if (!loaded) missing.push("a viewport showing a loaded image");
      }
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
          await clickWhenReady(page, targets[i], timeoutMs);
          // What the toggle opens is the next target: wait until it is there.
          if (next) await next.waitFor({ state: "attached", timeout: timeoutMs });
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
      let squared = null;
      if (step.squareViewport) {
        squared = await squareTheViewport(page, timeoutMs);
        if (!squared) missing.push("a square viewport");
      }
      await page.waitForTimeout(step.settleMs || 0);
      await dismissTours(page);
      const screenshot = path.join(plan.out, `${step.name}.png`);
      await page.screenshot({ path: screenshot });
      const geometry = step.geometry ? await page.evaluate(probeGeometry) : null;
      const canvases = await page.evaluate(() =>
        Array.from(document.querySelectorAll("canvas")).map((c) => [c.width, c.height]));
      report.steps.push({
        name: step.name,
        url: page.url(),
        missing,
        clicked,
        loaded,
        squared,
        geometry,
        viewportSize: page.viewportSize(),
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
