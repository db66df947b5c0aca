// Drive a real Chromium (the system's, through playwright-core) over one dashboard page and print,
// as JSON on stdout, what a reader of that page would see. tests/dashboard/test_dashboard.py
// runs it; by hand:
//   node tests/dashboard/browse.mjs --base http://127.0.0.1:3000 --page benchmarks
// Options: --page benchmarks|docs|live|live-problem, --chromium PATH (default /usr/bin/chromium),
// --min-requests N (live: wait until the page counts N requests and shows a rate),
// --positive-rate (live: also wait for a request rate above zero),
// --timeout-ms N, --screenshot FILE.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

// playwright-core is a devDependency of the dashboard; resolve it from there.
const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "..", "dashboard", "package.json"));
const { chromium } = require("playwright-core");

const { values: args } = parseArgs({
  options: {
    base: { type: "string" },
    page: { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    "min-requests": { type: "string", default: "0" },
    "positive-rate": { type: "boolean", default: false },
    "timeout-ms": { type: "string", default: "30000" },
    screenshot: { type: "string" },
  },
});
const timeout = Number(args["timeout-ms"]);

const COLLECTORS = {
  async benchmarks(page) {
    await page.goto(`${args.base}/benchmarks`);
    await page.waitForSelector("[data-testid=bench-section]", { timeout });
    return page.$$eval("[data-testid=bench-section]", (sections) =>
      ({
        sections: sections.map((section) => ({
          id: section.dataset.scenario,
          file: section.dataset.file,
          status: section.dataset.status,
          source: section.querySelector("[data-testid=source]")?.textContent ?? null,
          notRun: section.querySelector("[data-testid=not-run]")?.textContent ?? null,
          charts: [...section.querySelectorAll("[data-testid=chart]")].map((chart) => ({
            id: chart.dataset.chart,
            title: chart.querySelector(".chart-title")?.textContent ?? null,
            hasSvg: chart.querySelector("svg") !== null,
            categories: [...chart.querySelectorAll("svg .cat-label")].map((t) => t.textContent),
            bars: [...chart.querySelectorAll("svg rect[data-value]")].map((rect) => ({
              category: rect.dataset.category,
              series: rect.dataset.series,
              value: Number(rect.dataset.value),
              label: rect.parentElement.querySelector("text.bar-value")?.textContent ?? null,
              width: rect.getBoundingClientRect().width,
            })),
          })),
        })),
      }));
  },

  async docs(page) {
    await page.goto(`${args.base}/docs`);
    await page.waitForSelector("[data-testid=doc]", { timeout });
    return page.$eval("[data-testid=doc]", (doc) => {
      const table = doc.querySelector("table");
      return {
        doc: doc.dataset.doc,
        firstHeading: doc.querySelector("h1, h2")?.textContent ?? null,
        tables: doc.querySelectorAll("table").length,
        firstTableHeader: table ? [...table.querySelectorAll("th")].map((th) => th.textContent) : [],
        firstTableRows: table ? table.querySelectorAll("tbody tr").length : 0,
        navLinks: [...document.querySelectorAll(".docs-nav a")].map((a) => a.textContent),
        tableVisible: table ? table.getBoundingClientRect().height > 0 : false,
      };
    });
  },

  async live(page) {
    await page.goto(`${args.base}/live`);
    // A rate needs two polls: wait for the count, then for a rate (above zero if asked).
    await page.waitForFunction(
      ([wanted, positive]) => {
        const total = document.querySelector("[data-testid=requests-total]");
        const rate = document.querySelector("[data-testid=request-rate]");
        if (!total || Number(total.dataset.value) < wanted || !rate) return false;
        return positive ? Number(rate.dataset.value) > 0 : rate.dataset.value !== undefined;
      },
      [Number(args["min-requests"]), args["positive-rate"]],
      { timeout },
    );
    return page.evaluate(() => ({
      state: document.querySelector("[data-testid=live-status]")?.dataset.state ?? null,
      requestsTotal: Number(document.querySelector("[data-testid=requests-total]").dataset.value),
      requestsByStatus: Object.fromEntries(
        [...document.querySelectorAll("[data-testid=requests-by-status] li")].map((li) => [
          li.dataset.status, Number(li.dataset.value)])),
      requestRate: document.querySelector("[data-testid=request-rate]")?.textContent ?? null,
      requestRateValue: Number(document.querySelector("[data-testid=request-rate]").dataset.value),
      cacheHitRatio: document.querySelector("[data-testid=cache-hit-ratio]")?.textContent ?? null,
      models: [...document.querySelectorAll("[data-testid=model]")].map((m) => ({
        name: m.dataset.model,
        strategy: m.querySelector("h2 .badge")?.textContent ?? null,
        decisionMix: m.querySelector("[data-testid=decision-mix]")?.textContent ?? null,
      })),
      deployments: [...document.querySelectorAll("[data-testid=deployment-row]")].map((row) => {
        const cell = (f) => row.querySelector(`[data-field=${f}]`);
        return {
          model: row.dataset.model,
          id: row.dataset.deployment,
          requestsTotal: Number(cell("requests_total").dataset.value),
          failuresTotal: Number(cell("failures_total").dataset.value),
          circuit: cell("circuit").textContent.trim(),
          rate: cell("rate").dataset.value === undefined ? null : Number(cell("rate").dataset.value),
        };
      }),
      tenants: document.querySelector("[data-testid=tenants]")?.textContent ?? null,
    }));
  },

  async "live-problem"(page) {
    await page.goto(`${args.base}/live`);
    await page.waitForSelector("[data-testid=live-problem]", { timeout });
    return page.$eval("[data-testid=live-problem]", (el) => ({
      problem: el.dataset.problem,
      text: el.textContent,
      state: document.querySelector("[data-testid=live-status]")?.dataset.state ?? null,
    }));
  },
};

const collect = COLLECTORS[args.page];
if (!args.base || !collect) {
  console.error(`usage: browse.mjs --base URL --page ${Object.keys(COLLECTORS).join("|")}`);
  process.exit(2);
}

// --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
const browser = await chromium.launch({ executablePath: args.chromium, args: ["--no-sandbox"] });
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(timeout);
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(String(error)));
  page.on("console", (msg) => {
    // A failed request is reported below with its URL; the console line says less.
    if (msg.type() === "error" && !msg.text().startsWith("Failed to load resource")) {
      pageErrors.push(`console: ${msg.text()}`);
    }
  });
  const failedRequests = [];
  page.on("response", (response) => {
    if (response.status() >= 400) failedRequests.push(`${response.status()} ${response.url()}`);
  });
  const found = await collect(page);
  if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
  console.log(JSON.stringify({ page: args.page, pageErrors, failedRequests, ...found }));
} finally {
  await browser.close();
}
