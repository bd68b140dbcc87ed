// Runs the web SDK scenarios in headless Chromium (Debian's /usr/bin/chromium) and writes what
// the page saw as JSON.
//
//   node driver.mjs --page-url http://127.0.0.1:PAGEPORT/index.html \
//                   --endpoint http://127.0.0.1:PROXYPORT/collect --out result.json
//
// Every scenario runs in a new browser context (empty localStorage, so a new device and user).
// The fetch wrapper in the page records each request with its body and status; preflights
// (which the page cannot see) are read from the DevTools protocol.
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const { values: opts } = parseArgs({
  options: {
    'page-url': { type: 'string' },
    endpoint: { type: 'string' },
    out: { type: 'string' },
    modes: { type: 'string', default: 'Immediate,Batch' },
    interval: { type: 'string', default: '1000' },
    chromium: { type: 'string', default: process.env.CHROMIUM || '/usr/bin/chromium' },
  },
});
for (const name of ['page-url', 'endpoint', 'out']) {
  if (!opts[name]) throw new Error(`--${name} is required`);
}

const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

async function watchPreflights(context, page) {
  const seen = new Map();
  const cdp = await context.newCDPSession(page);
  cdp.on('Network.requestWillBeSent', e => {
    if (e.type !== 'Preflight' && e.request.method !== 'OPTIONS') return;
    seen.set(e.requestId, { url: e.request.url, method: e.request.method, request_headers: e.request.headers });
  });
  cdp.on('Network.responseReceived', e => {
    const entry = seen.get(e.requestId);
    if (entry) Object.assign(entry, { status: e.response.status, response_headers: e.response.headers });
  });
  cdp.on('Network.loadingFailed', e => {
    const entry = seen.get(e.requestId);
    if (entry) entry.error = e.errorText;
  });
  await cdp.send('Network.enable');
  return () => [...seen.values()];
}

async function runScenario(browser, mode) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 720 }, locale: 'en-US' });
  const page = await context.newPage();
  const console_ = [];
  page.on('console', msg => console_.push(`${msg.type()}: ${msg.text()}`));
  page.on('pageerror', err => console_.push(`pageerror: ${err.stack || err}`));
  const preflights = await watchPreflights(context, page);
  try {
    await page.goto(opts['page-url'], { waitUntil: 'load' });
    await page.evaluate(cfg => window.e2e.start(cfg), {
      endpoint: opts.endpoint,
      mode,
      interval: Number(opts.interval),
    });
    // Wait for each step's uploads (in Batch mode: for a flush) so that Batch mode makes
    // several flushes, each with several events.
    const settled = [await page.evaluate(() => window.e2e.settle())];
    await page.evaluate(() => window.e2e.shop());
    settled.push(await page.evaluate(() => window.e2e.settle()));
    // Real (trusted) clicks on the two links with absolute hrefs: the SDK records `_click`.
    await page.click('#product-link');
    await page.click('#partner-link');
    settled.push(await page.evaluate(() => window.e2e.settle()));
    await page.evaluate(() => window.e2e.quiesce());
    const snapshot = await page.evaluate(() => window.e2e.snapshot());
    return { mode, settled, ...snapshot, preflights: preflights(), console: console_ };
  } finally {
    await context.close();
  }
}

const started = Date.now();
// launch() starts Chromium with a fresh temporary --user-data-dir (removed on close); every
// scenario then gets its own isolated context (own localStorage) in that browser.
const browser = await chromium.launch({
  executablePath: opts.chromium,
  headless: true,
  args: ARGS,
  timeout: 30000,
});
try {
  const result = { browser_version: browser.version(), scenarios: [] };
  for (const mode of opts.modes.split(',')) {
    result.scenarios.push(await runScenario(browser, mode));
  }
  result.elapsed_ms = Date.now() - started;
  writeFileSync(opts.out, JSON.stringify(result, null, 1));
} finally {
  await browser.close();
}
