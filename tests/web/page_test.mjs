// Drives the reference manager's live view in headless Chromium: the agent is
// listed, a move is started from the form, its bar advances to 100 %.
// usage: node page_test.mjs URL SERVER OLD NEW SCREENSHOT [AGENT_ID]
import { chromium } from "playwright-core";

const [url, server, oldPath, newPath, shot, agentId = "it-agent"] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
let code = 0;
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
  await page.goto(url);
  await page.waitForSelector("#agents .dot.up", { timeout: 20000 });
  const agents = await page.textContent("#agents");
  if (!agents.includes(agentId)) throw new Error("agent not listed: " + agents);
  await page.fill("#serverName", server);
  await page.fill("#oldPath", oldPath);
  await page.fill("#newPath", newPath);
  await page.click("#start");
  await page.waitForSelector('.move[data-phase="complete"]', { timeout: 120000 });
  const width = await page.$eval('.move[data-phase="complete"] .bar', (e) => e.style.width);
  if (parseFloat(width) !== 100) throw new Error("final bar width " + width);
  // A finished move reads as finished: its duration and average rate.
  const meta = await page.textContent('.move[data-phase="complete"] .meta');
  const done = /done in (\d+(\.\d)?) (ms|s) · avg (\d+(\.\d)?) (B|KiB|MiB|GiB)\/s/.exec(meta);
  if (!done) throw new Error("finished move shows no duration and average rate: " + meta);
  if (/ETA|0 B\/s/.test(meta)) throw new Error("finished move still shows a rate/ETA: " + meta);
  const log = await page.evaluate(() => window.progressLog);
  const mid = log.filter((p) => p.phase === "copying" && p.percent > 0 && p.percent < 100);
  const phases = [...new Set(log.map((p) => p.phase))];
  console.log(JSON.stringify({ frames: log.length, midCopy: mid.length, phases, finished: done[0] }));
  if (!mid.length) throw new Error("the bar never showed a copy in progress");
  for (const p of ["copying", "verifying", "complete"])
    if (!phases.includes(p)) throw new Error("phase " + p + " never shown");
  await page.screenshot({ path: shot, fullPage: true });
} catch (e) {
  console.error(String(e));
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
