// The chat page at / in headless Chromium, as users of ChatGPT or Open WebUI would try it
// (driven by tests/browser.rs):
// - desktop and a 390×844 phone: nothing the user needs is off-screen;
// - a reply with a <script> and an onerror attribute renders as inert Markdown;
// - usage and cost under a reply, also after a reload;
// - a backend error shows in the conversation with Retry (the "broken" agent);
// - a message typed while the server is down is sent once it is back (the test prints
//   STOP / START and waits for a line on stdin while tests/browser.rs restarts the server);
// - a room in two browser contexts: presence, typing and read receipts.
// Screenshots go to SHOTS_DIR when set (docs/ keeps a desktop and a phone one).
// usage: node chat.test.js http://127.0.0.1:PORT/
const { chromium } = require('playwright-core');
const readline = require('readline');
const assert = (c, m) => { if (!c) { throw new Error('assertion failed: ' + m); } };
const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((r) => lines.once('line', r));

async function onScreen(page, selectors, label) {
  const vp = page.viewportSize();
  for (const sel of selectors) {
    const b = await page.locator(sel).first().boundingBox();
    assert(b, `${label}: ${sel} is not visible`);
    assert(b.x >= 0 && b.y >= 0 && b.x + b.width <= vp.width + 1 && b.y + b.height <= vp.height + 1,
      `${label}: ${sel} is off-screen: ${JSON.stringify(b)} in ${vp.width}x${vp.height}`);
  }
  const wide = await page.evaluate(() => document.documentElement.scrollWidth);
  assert(wide <= vp.width + 1, `${label}: the page is ${wide} px wide in a ${vp.width} px viewport`);
}

async function signedIn(browser, name, viewport) {
  const ctx = await browser.newContext({ viewport });
  const page = await ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('dialog', (d) => d.accept());
  await page.addInitScript((n) => { if (!localStorage.getItem('confab.name')) localStorage.setItem('confab.name', n); }, name);
  await page.goto(process.argv[2]);
  await page.waitForSelector('#state.open', { timeout: 10000 });
  return { ctx, page, errors };
}

async function ask(page, text) {
  await page.fill('#input', text);
  await page.press('#input', 'Enter');
}

(async () => {
  const url = process.argv[2];
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    // Desktop: a chat with hostile Markdown in the reply (the demo model repeats it).
    const { page, errors } = await signedIn(browser, 'Dana', { width: 1280, height: 800 });
    await onScreen(page, ['#input', '#send', 'label.attach', '#stop', '#agent', '#convs'], 'desktop');
    await ask(page, 'Show **bold** and `code` <script>window.__pwned=1</script> <img src=x onerror="window.__pwned=2">');
    await page.waitForFunction(() => document.querySelector('.msg.assistant .meta')?.textContent.includes('tokens'), null, { timeout: 15000 });
    const html = await page.innerHTML('.msg.assistant .body');
    assert(html.includes('<strong>bold</strong>'), 'Markdown rendered: ' + html);
    assert(!/<script/i.test(html) && !/onerror/i.test(html) && !/<img/i.test(html), 'sanitised: ' + html);
    assert(await page.evaluate(() => window.__pwned === undefined), 'no script ran');
    const meta = await page.textContent('.msg.assistant .meta');
    assert(/\$/.test(meta) && /tokens/.test(meta), 'usage and cost: ' + meta);
    if (process.env.SHOTS_DIR) await page.screenshot({ path: process.env.SHOTS_DIR + '/page-desktop.png' });

    // Usage and cost survive a reload (history carries them).
    await page.reload();
    await page.waitForFunction(() => document.querySelector('.msg.assistant .meta')?.textContent.includes('tokens'), null, { timeout: 10000 });
    // Multi-line input: Shift+Enter is a new line, not a send.
    await page.fill('#input', 'line one');
    await page.press('#input', 'Shift+Enter');
    await page.type('#input', 'line two');
    assert((await page.inputValue('#input')) === 'line one\nline two', 'multi-line input');
    await page.fill('#input', '');

    // A backend error is shown in the conversation, with Retry.
    await page.selectOption('#agent', 'broken');
    await ask(page, 'this one fails');
    await page.waitForSelector('.msg.error button.retry', { timeout: 15000 });
    assert((await page.textContent('.msg.error')).includes('The model failed'), 'error in the conversation');
    await page.selectOption('#agent', 'assistant');

    // Rename and search.
    await page.click('#convs .item .rename');
    await page.fill('#convs input.title-edit', 'Hostile markdown');
    await page.press('#convs input.title-edit', 'Enter');
    await page.waitForFunction(() => document.querySelector('#convs').textContent.includes('Hostile markdown'), null, { timeout: 10000 });
    await page.fill('#search', 'nothing matches this');
    assert(!(await page.textContent('#convs')).includes('Hostile markdown'), 'search filters');
    await page.fill('#search', '');

    // The server goes away: a message typed meanwhile waits, and is sent once it is back.
    console.log('STOP');
    await nextLine();
    await page.waitForSelector('#state.closed, #state.connecting', { timeout: 10000 });
    await ask(page, 'typed while the server was down');
    await page.waitForSelector('.msg.user.pending', { timeout: 5000 });
    console.log('START');
    await nextLine();
    await page.waitForSelector('#state.open', { timeout: 20000 });
    await page.waitForFunction(() => !document.querySelector('.msg.user.pending')
      && [...document.querySelectorAll('.msg.user .body')].filter((b) => b.textContent === 'typed while the server was down').length === 1, null, { timeout: 20000 });

    // A phone: nothing off-screen, the sidebar behind the menu button.
    const phone = await signedIn(browser, 'Pat', { width: 390, height: 844 });
    await onScreen(phone.page, ['#input', '#send', 'label.attach', '#stop', '#menu'], 'phone');
    await ask(phone.page, 'Hello from a phone');
    await phone.page.waitForFunction(() => document.querySelector('.msg.assistant .meta')?.textContent.includes('tokens'), null, { timeout: 15000 });
    await onScreen(phone.page, ['#input', '#send', '.msg.assistant'], 'phone after a reply');
    if (process.env.SHOTS_DIR) await phone.page.screenshot({ path: process.env.SHOTS_DIR + '/page-phone.png' });
    await phone.page.click('#menu');
    await phone.page.waitForFunction(() => document.querySelector('aside').getBoundingClientRect().x >= 0, null, { timeout: 5000 });
    await onScreen(phone.page, ['#new', '#convs'], 'phone sidebar');

    // A room in two browsers: presence, typing, read receipts.
    const a = await signedIn(browser, 'Ann', { width: 1000, height: 700 });
    const b = await signedIn(browser, 'Bob', { width: 1000, height: 700 });
    for (const p of [a.page, b.page]) {
      await p.click('#tab-rooms');
      await p.fill('#room-id', 'team');
      await p.click('#join');
      await p.waitForFunction(() => document.querySelector('#title').textContent.includes('team'), null, { timeout: 10000 });
    }
    await a.page.waitForFunction(() => document.querySelector('#members').textContent.includes('bob') || document.querySelector('#members').textContent.includes('Bob'), null, { timeout: 10000 });
    await b.page.type('#input', 'hi');
    await a.page.waitForFunction(() => document.querySelector('#typing').textContent.includes('typing'), null, { timeout: 10000 });
    await b.page.press('#input', 'Enter');
    await a.page.waitForFunction(() => [...document.querySelectorAll('.msg.user .body')].some((x) => x.textContent === 'hi'), null, { timeout: 10000 });
    // Ann read Bob's message: Bob sees it; and the other way round.
    await b.page.waitForFunction(() => /Read by ann/i.test(document.querySelector('#receipts').textContent), null, { timeout: 10000 });
    await a.page.waitForFunction(() => /Read by bob/i.test(document.querySelector('#receipts').textContent), null, { timeout: 10000 });

    const all = [...errors, ...phone.errors, ...a.errors, ...b.errors];
    assert(all.length === 0, 'page errors: ' + all.join('; '));
    console.log('chat page test passed');
  } finally {
    await browser.close();
    lines.close();
  }
})().then(() => process.exit(0), (e) => { console.error('FAIL', e); process.exit(1); });
