// Drives confab's browser test page like a newcomer would: the page signs in with a dev
// token, connects, sends a message, renders the streaming reply, survives a reload
// mid-stream (resume), Stop cancels the reply, and a file uploaded with the 📎 button
// (chunked, SHA-256 checked) appears in the conversation and downloads byte for byte.
// usage: node page.test.js http://127.0.0.1:PORT/
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
    await page.waitForSelector('#state.open', { timeout: 10000 });
    await page.fill('#input', 'Hello from the browser test');
    await page.click('form button');
    await page.waitForSelector('.msg.assistant.streaming', { timeout: 10000 });
    await page.waitForFunction(() => (document.querySelector('.msg.assistant .body') || {}).textContent.length > 40, null, { timeout: 10000 });
    const before = await page.textContent('.msg.assistant .body');
    assert(before.startsWith('Hello! I am confab'), 'streamed text: ' + before);

    // Reload mid-stream: the page resumes the open conversation with no gap.
    await page.reload();
    await page.waitForSelector('#state.open', { timeout: 10000 });
    await page.waitForFunction((n) => (document.querySelector('.msg.assistant .body') || { textContent: '' }).textContent.length > n, before.length, { timeout: 10000 });
    const after = await page.textContent('.msg.assistant .body');
    assert(after.startsWith(before), `resumed text continues the old one:\n${before}\n${after}`);
    assert((await page.$$('.msg.user')).length === 1, 'one user message after resume');

    await page.click('#stop');
    await page.waitForFunction(() => !document.querySelector('.msg.assistant.streaming'), null, { timeout: 10000 });
    const meta = await page.textContent('.msg.assistant .meta');
    assert(meta.includes('cancelled'), 'meta after stop: ' + meta);
    await page.waitForFunction(() => document.querySelector('#convs').textContent.includes('Hello from the browser test'), null, { timeout: 10000 });

    // Upload: ~110 KB goes up in three chunks; the link in the conversation downloads it.
    const content = Buffer.from('confab file upload test · '.repeat(4000));
    await page.setInputFiles('#file', { name: 'notes.txt', mimeType: 'text/plain', buffer: content });
    await page.waitForSelector('.msg.user a.file', { timeout: 10000 });
    const [dl] = await Promise.all([page.waitForEvent('download'), page.click('.msg.user a.file')]);
    assert(dl.suggestedFilename() === 'notes.txt', 'download name: ' + dl.suggestedFilename());
    const got = require('fs').readFileSync(await dl.path());
    assert(got.equals(content), `downloaded ${got.length} bytes, uploaded ${content.length}`);
    assert(errors.length === 0, 'page errors: ' + errors.join('; '));
    console.log('browser test passed: ' + meta + '; upload round trip ' + content.length + ' bytes');
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error('FAIL', e); process.exit(1); });
