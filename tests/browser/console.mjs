// The console in a real browser: Debian's Chromium, driven by Playwright, against a daemon
// the Rust test (tests/e2e/console.rs) started with the local target.
//
//   sign in → board → a run triggered through the API appears live (no reload) and reaches
//   its approval gate → its run page (timeline, evidence) → approve → it succeeds, live →
//   an emergency rollback from the console (plan, then confirmation) → the board changes.
//   Refusals: no session, a wrong token, the wrong role, a missing CSRF token, a token for
//   another environment.
//
// Every step asserts what it expects; any failure exits non-zero with what was on the page.
// Prints the figures it measured (page weight, first render, event → page latency) as JSON
// on its last line for the Rust test to report.

import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";

const base = process.env.CONSOLE_URL;
const t = {
  ops: process.env.TOKEN_OPS, // admin: approve and roll back
  deployer: process.env.TOKEN_DEPLOYER, // triggers the run through the API
  reader: process.env.TOKEN_READER, // read only
  local: process.env.TOKEN_LOCAL, // admin, limited to `local`
};
const shots = process.env.SHOT_DIR;
mkdirSync(shots, { recursive: true });
const step = (what) => console.error(`[browser] ${what}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const figures = {};
let page;
try {
  const ctx = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  page = await ctx.newPage();

  // No session: the board sends the browser to sign in.
  step("no session → sign-in page");
  await page.goto(`${base}/`);
  assert.match(page.url(), /\/login\?next=%2F$/);
  await page.getByLabel("API token").fill("dat_not_a_token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("That token is not one this daemon knows.").waitFor();

  // The session cookie: HttpOnly, SameSite=Strict, invisible to scripts.
  step("sign in as ops");
  await page.getByLabel("API token").fill(t.ops);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Board" }).waitFor();
  const cookies = await ctx.cookies();
  const session = cookies.find((c) => c.name === "da_session");
  assert.ok(session, "a session cookie");
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, "Strict");
  assert.equal(await page.evaluate(() => document.cookie.includes("da_session")), false);
  assert.equal(await page.locator("tr[data-env=local] .version").innerText(), "v2");

  // First render and page weight of the board, as the browser measured them.
  const nav = await page.evaluate(() => {
    const [n] = performance.getEntriesByType("navigation");
    const res = performance.getEntriesByType("resource");
    const fcp = performance.getEntriesByName("first-contentful-paint")[0];
    return {
      html_bytes: n.transferSize || n.encodedBodySize,
      asset_bytes: res.reduce((s, r) => s + (r.transferSize || r.encodedBodySize), 0),
      response_ms: n.responseEnd - n.requestStart,
      first_paint_ms: fcp ? fcp.startTime : null,
    };
  });
  figures.board = nav;
  await page.waitForSelector("main[data-connected='1']");

  // A run triggered through the API appears on the open board, live.
  step("trigger a gated run through the API; the board shows it waiting, live");
  const r = await fetch(`${base}/v1/deployments`, {
    method: "POST",
    headers: { authorization: `Bearer ${t.deployer}`, "content-type": "application/json" },
    body: JSON.stringify({ environment: "gated", version: "g1", reason: "console test" }),
  });
  const triggered = await r.text();
  assert.equal(r.status, 202, triggered);
  const run = JSON.parse(triggered).id;
  const gatedRow = page.locator("tr[data-env=gated]");
  await gatedRow.getByText("waiting").waitFor({ timeout: 60000 });
  await gatedRow.getByText("approval before promote").waitFor();
  const boardUpdates = await page.evaluate(() => window.consoleUpdates);
  assert.ok(boardUpdates.length > 0, "the board refreshed from its live feed");
  figures.board_latency_ms = boardUpdates.map((u) => u.shown - u.at);

  // The run page: its timeline, the gate.
  step("the run page: timeline, gate");
  await gatedRow.getByRole("link", { name: "g1" }).click();
  await page.getByRole("heading", { name: `Run ${run}` }).waitFor();
  for (const stage of ["validate", "deploy", "verify"]) {
    await page.locator(`svg.timeline g[data-stage=${stage}]`).waitFor();
  }
  await page.getByRole("heading", { name: "Waiting for approval before promote" }).waitFor();
  await page.locator("table.checks td", { hasText: "check" }).first().waitFor();

  // Missing CSRF token: refused, and the run still waits.
  step("a decision without the CSRF token is refused");
  const noCsrf = await page.request.post(`${base}/runs/${run}/decide`, {
    form: { decision: "approve", reason: "no csrf" },
    maxRedirects: 0,
  });
  assert.equal(noCsrf.status(), 403);
  const still = await (await fetch(`${base}/v1/runs/${run}`, {
    headers: { authorization: `Bearer ${t.reader}` },
  })).json();
  assert.equal(still.waiting.length, 1, "still waiting after the refused form");

  // Wrong role: a reader's session sees the run but may not decide.
  step("a reader may not approve");
  const readerCtx = await browser.newContext();
  const rp = await readerCtx.newPage();
  await rp.goto(`${base}/login`);
  await rp.getByLabel("API token").fill(t.reader);
  await rp.getByRole("button", { name: "Sign in" }).click();
  await rp.goto(`${base}/runs/${run}`);
  await rp.getByText("may not approve in gated").waitFor();
  assert.equal(await rp.getByRole("button", { name: "Approve" }).count(), 0);
  const readerCsrf = await rp.locator("form.signout input[name=csrf]").getAttribute("value");
  const asReader = await rp.request.post(`${base}/runs/${run}/decide`, {
    form: { csrf: readerCsrf, decision: "approve", reason: "reader" },
    maxRedirects: 0,
  });
  assert.equal(asReader.status(), 403);
  await readerCtx.close();

  // No session at all: an action is refused outright.
  step("no session: an action is refused");
  const anon = await fetch(`${base}/runs/${run}/decide`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: "decision=approve&reason=anon&csrf=x",
    redirect: "manual",
  });
  assert.equal(anon.status, 401);

  // A token for another environment: the gated run and its environment do not exist for it.
  step("a token for `local` only sees `local`");
  const localCtx = await browser.newContext();
  const lp = await localCtx.newPage();
  await lp.goto(`${base}/login`);
  await lp.getByLabel("API token").fill(t.local);
  await lp.getByRole("button", { name: "Sign in" }).click();
  await lp.getByRole("heading", { name: "Board" }).waitFor();
  assert.equal(await lp.locator("tr[data-env=gated]").count(), 0);
  assert.equal(await lp.locator("tr[data-env=local]").count(), 1);
  assert.equal((await lp.goto(`${base}/runs/${run}`)).status(), 404);
  assert.equal((await lp.goto(`${base}/environments/gated`)).status(), 403);
  assert.equal((await lp.request.get(`${base}/console/events?env=gated`)).status(), 404);
  await lp.goto(`${base}/`);
  const localCsrf = await lp.locator("form.signout input[name=csrf]").getAttribute("value");
  const asLocal = await lp.request.post(`${base}/runs/${run}/decide`, {
    form: { csrf: localCsrf, decision: "approve", reason: "other env" },
    maxRedirects: 0,
  });
  assert.equal(asLocal.status(), 404);
  await localCtx.close();

  // Approve; the run goes on and succeeds, shown live.
  step("approve; the run succeeds, live");
  await page.screenshot({ path: `${shots}/run.png`, fullPage: true });
  await page.getByLabel("Reason (recorded in the audit log)").fill("looks good in the console");
  await page.getByRole("button", { name: "Approve" }).click();
  await page.getByRole("heading", { name: `Run ${run}` }).waitFor();
  await page.locator("p.sub .badge", { hasText: "succeeded" }).waitFor({ timeout: 60000 });
  await page.locator("svg.timeline g[data-stage=promote].ok").waitFor();
  const runUpdates = await page.evaluate(() => window.consoleUpdates);
  figures.run_latency_ms = runUpdates.filter((u) => u.kind !== "progress").map((u) => u.shown - u.at);

  // The emergency rollback, from the console: the plan, then the confirmation.
  step("roll back `local` from the console");
  await page.goto(`${base}/`);
  await page.waitForSelector("main[data-connected='1']");
  assert.equal(await page.locator("tr[data-env=local] .version").innerText(), "v2");
  await page.locator("tr[data-env=local] th a").click();
  await page.getByRole("heading", { name: "Emergency rollback" }).waitFor();
  await page.getByLabel("the app only").check();
  await page.getByLabel("Reason (recorded, audited, sent to the notifiers)").fill("console rollback drill");
  await page.getByRole("button", { name: "Show the plan" }).click();
  await page.getByRole("heading", { name: "Rollback of local (app)" }).waitFor();
  assert.ok((await page.locator("ul.plan li").count()) > 0, "the plan lists its steps");
  await page.getByRole("button", { name: /^Roll back local to / }).click();
  await page.getByText(/is live \(.* agent time\)/).waitFor({ timeout: 60000 });
  await page.getByRole("link", { name: "Back to the board" }).click();
  await page.getByRole("heading", { name: "Board" }).waitFor();
  assert.equal(await page.locator("tr[data-env=local] .version").innerText(), "v1");
  await page.locator("tr[data-env=gated] .version", { hasText: "g1" }).waitFor();
  await page.screenshot({ path: `${shots}/board.png`, fullPage: true });

  // The audit log: the chain verifies, and the console's actions are the token's.
  step("audit log");
  await page.getByRole("link", { name: "Audit" }).click();
  await page.getByText("hash chain of").waitFor();
  await page.locator(".chain .badge", { hasText: "intact" }).waitFor();
  assert.ok((await page.locator("tr", { hasText: "token:ops" }).count()) >= 2);

  // Readable on a phone: the board's rows become cards, nothing scrolls sideways.
  step("phone width");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${base}/`);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the board scrolls sideways by ${overflow}px at 390px`);
  await page.screenshot({ path: `${shots}/board-phone.png`, fullPage: true });

  // Without JavaScript the pages still read.
  step("without JavaScript");
  const nojs = await browser.newContext({ javaScriptEnabled: false });
  const np = await nojs.newPage();
  await np.goto(`${base}/login`);
  await np.getByLabel("API token").fill(t.reader);
  await np.getByRole("button", { name: "Sign in" }).click();
  await np.goto(`${base}/runs/${run}`);
  await np.locator("svg.timeline g[data-stage=promote]").waitFor();
  await nojs.close();

  console.log(JSON.stringify(figures));
} catch (e) {
  if (page) {
    console.error(`[browser] failed on ${page.url()}:\n${(await page.content().catch(() => "")).slice(0, 4000)}`);
    await page.screenshot({ path: `${shots}/failure.png`, fullPage: true }).catch(() => {});
  }
  console.error(e);
  process.exitCode = 1;
} finally {
  await browser.close();
}
