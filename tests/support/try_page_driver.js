// Drive the admin's /try page in headless Chromium (playwright-core) as a person would: open
// /try (the login form answers), give the token, choose a file and paste report text, submit,
// and print a JSON report of what the result page shows; save a full-page screenshot.
//
// Plan (JSON file, argv[2]): {url, token, file, report, screenshot, chromium, args}.
"use strict";

const fs = require("fs");
const { chromium } = require("playwright-core");

async function main() {
  const plan = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const browser = await chromium.launch({ executablePath: plan.chromium, args: plan.args });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    await page.goto(plan.url + "/try");
    await page.fill('input[name="token"]', plan.token);
    await Promise.all([page.waitForURL(plan.url + "/try"), page.click('button[type="submit"]')]);
    await page.setInputFiles('input[name="file"]', plan.file);
    await page.fill('textarea[name="report"]', plan.report);
    await Promise.all([
      page.waitForLoadState("load"),
      page.waitForSelector("#findings", { timeout: 120000 }),
      page.click('form.try button[type="submit"]'),
    ]);
    const findings = await page.$$eval("#findings tbody tr", (rows) =>
      rows.map((row) => Array.from(row.cells).map((cell) => cell.innerText.trim())),
    );
    const images = await page.$$eval("img", (all) =>
      all.map((img) => ({ id: img.id, loaded: img.complete, width: img.naturalWidth })),
    );
    const report = {
      title: await page.title(),
      findings,
      images,
      similar: await page.$eval("#similar", (element) => element.innerText),
      card: await page.$eval("article.card", (element) => element.innerHTML),
    };
    await page.screenshot({ path: plan.screenshot, fullPage: true });
    process.stdout.write(JSON.stringify(report));
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error));
  process.exit(1);
});
