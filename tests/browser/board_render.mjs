// The board's first render in Debian's Chromium, for `make bench-console`: signs in with
// TOKEN, then loads the board LOADS times, each a fresh navigation, and prints what the
// browser measured (JSON): server response, DOMContentLoaded, first contentful paint, bytes.
import { chromium } from "playwright-core";

const [base, token, loads = "10"] = [process.env.CONSOLE_URL, process.env.TOKEN, process.env.LOADS];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${base}/login`);
  await page.getByLabel("API token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Board" }).waitFor();
  const out = [];
  for (let i = 0; i < Number(loads); i++) {
    await page.goto(`${base}/`, { waitUntil: "load" });
    await page.waitForFunction(() => performance.getEntriesByName("first-contentful-paint").length > 0);
    out.push(await page.evaluate(() => {
      const [n] = performance.getEntriesByType("navigation");
      return {
        response_ms: n.responseEnd - n.requestStart,
        dom_ms: n.domContentLoadedEventEnd,
        fcp_ms: performance.getEntriesByName("first-contentful-paint")[0].startTime,
        html_bytes: n.encodedBodySize,
        rows: document.querySelectorAll("table.board tbody tr").length,
      };
    }));
  }
  console.log(JSON.stringify(out));
} finally {
  await browser.close();
}
