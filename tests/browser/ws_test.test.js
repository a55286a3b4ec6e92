// Drives 001's test page (GET /ws/test) in headless Chromium: it speaks the /ws/chat
// protocol with the seed document's own ChatWebSocket class. Get a dev token, connect,
// send with a session id; the progress steps, the streamed reply and the completion show.
// usage: node ws_test.test.js http://127.0.0.1:PORT/ws/test
const { chromium } = require('playwright-core');
const assert = (c, m) => { if (!c) { throw new Error('assertion failed: ' + m); } };
(async () => {
  const url = process.argv[2];
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(url);
    await page.click('#devtoken');
    await page.waitForFunction(() => document.querySelector('#token').value.length > 20, null, { timeout: 10000 });
    await page.click('#connect');
    await page.waitForFunction(() => document.querySelector('#status').textContent.startsWith('authenticated as'), null, { timeout: 10000 });
    await page.fill('#session', 'page-session');
    await page.fill('#message', 'Hello from the /ws/test page');
    await page.click('#send');
    await page.waitForFunction(() => document.querySelector('#log').textContent.includes('complete: agent assistant'), null, { timeout: 10000 });
    const log = await page.textContent('#log');
    assert(log.includes('[starting] Processing started'), 'progress shown: ' + log);
    assert(log.includes('[generating]'), 'generating step shown: ' + log);
    const response = await page.textContent('#response');
    assert(response.startsWith('Hello! I am confab'), 'streamed reply: ' + response);
    assert(errors.length === 0, 'page errors: ' + errors.join('; '));
    console.log('ws_test page passed: ' + response.length + ' characters streamed');
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error('FAIL', e); process.exit(1); });
