import { expect, test, type Page } from '@playwright/test';

/** Opens the home page and waits until it is hydrated and the kinds have loaded. */
async function openHome(page: Page) {
  await page.goto('/');
  await expect(page.locator('#kind option')).toHaveCount(5);
}

/** Chooses a kind and waits for its example payload, so typing is not overwritten. */
async function chooseKind(page: Page, kind: string) {
  await page.selectOption('#kind', kind);
  await expect(page.locator('.kind-description')).not.toBeEmpty();
  await expect(page.locator('#payload')).not.toHaveValue('');
}

test('an echo task submitted from the form shows as succeeded without a reload', async ({ page }) => {
  await openHome(page);
  await page.evaluate(() => ((window as any).notReloaded = true));
  await chooseKind(page, 'echo');
  await page.fill('#payload', '{"greeting": "hello from the browser"}');
  await page.click('button[type=submit]');

  const row = page.locator('li.task').first();
  await expect(row.locator('.kind')).toHaveText('echo');
  await expect(row.locator('.badge')).toHaveText('succeeded');
  expect(await page.evaluate(() => (window as any).notReloaded)).toBe(true);
});

test('a sleep task shows a progress bar that moves to 100', async ({ page }) => {
  await openHome(page);
  await chooseKind(page, 'sleep');
  await page.fill('#payload', '{"ms": 2500, "steps": 5}');
  await page.click('button[type=submit]');

  const row = page.locator('li.task').first();
  await expect(row.locator('.kind')).toHaveText('sleep');
  await expect(row.locator('.badge')).toHaveText('running');
  await expect(row.locator('.progress-text')).toHaveText(/^(20|40|60|80)%$/);
  await expect(row.locator('.progress-text')).toHaveText('100%');
  await expect(row.locator('progress')).toHaveAttribute('value', '100');
  await expect(row.locator('.badge')).toHaveText('succeeded');
});

test('an invalid payload shows the schema error and submits nothing', async ({ page }) => {
  await openHome(page);
  const submissions: string[] = [];
  page.on('request', (request) => {
    if (request.method() === 'POST' && request.url().includes('/api/v1/tasks')) submissions.push(request.url());
  });
  await chooseKind(page, 'sleep');
  await page.fill('#payload', '{"ms": "soon"}');
  await page.click('button[type=submit]');

  await expect(page.locator('.field-errors li')).toHaveText(['/ms: must be integer']);
  await page.fill('#payload', '{"ms": 10, ');
  await page.click('button[type=submit]');
  await expect(page.locator('.field-errors li')).toHaveText(/not valid JSON/);
  expect(submissions).toEqual([]);
});

/** How many tasks the live list holds now (it shows the newest 50), asked of the API. */
async function listedTasks(page: Page): Promise<number> {
  const response = await page.request.get('/api/v1/tasks?limit=50');
  const body = await response.json();
  return body.tasks.length;
}

test('the task page shows the record, the events and the result', async ({ page }) => {
  await openHome(page);
  const before = await listedTasks(page);
  await chooseKind(page, 'text.stats');
  await page.fill('#payload', '"alpha beta alpha"');
  await page.click('button[type=submit]');

  // The new task, not an older one that is already done.
  await expect(page.locator('li.task')).toHaveCount(before + 1);
  const row = page.locator('li.task').first();
  await expect(row.locator('.kind')).toHaveText('text.stats');
  await expect(row.locator('.badge')).toHaveText('succeeded');
  await row.locator('a.task-link').click();

  await expect(page).toHaveURL(/\/tasks\/[0-9a-f-]{36}$/);
  await expect(page.locator('.record .kind')).toHaveText('text.stats');
  await expect(page.locator('.record .badge')).toHaveText('succeeded');
  await expect(page.locator('.result-body')).toContainText('"words":3');
  await expect(page.locator('.result-body')).toContainText('{"word":"alpha","count":2}');
  await expect(page.locator('.events .event-name').last()).toHaveText('succeeded');
});

test('waiting for the result shows it inline under the form', async ({ page }) => {
  await openHome(page);
  const before = await listedTasks(page);
  await chooseKind(page, 'text.stats');
  await page.fill('#payload', '"wait for me wait"');
  await page.check('#wait');
  await page.click('button[type=submit]');

  await expect(page.locator('.inline-result .result-body')).toContainText('"words":4');
  await expect(page.locator('.inline-result .result-body')).toContainText('{"word":"wait","count":2}');
  await expect(page.locator('li.task')).toHaveCount(before + 1);
  await expect(page.locator('li.task').first().locator('.badge')).toHaveText('succeeded');
});

test('a file chosen in the form is uploaded as the raw payload', async ({ page }) => {
  await openHome(page);
  await chooseKind(page, 'csv.summary');
  const rows = ['city,temperature'];
  for (let i = 0; i < 2000; i++) rows.push(`city-${i % 7},${i}`);
  await page.setInputFiles('#file', {
    name: 'temperatures.csv',
    mimeType: 'text/csv',
    buffer: Buffer.from(rows.join('\n') + '\n'),
  });
  await page.click('button[type=submit]');

  const row = page.locator('li.task').first();
  await expect(row.locator('.kind')).toHaveText('csv.summary');
  await expect(row.locator('.badge')).toHaveText('succeeded');
  await row.locator('a.task-link').click();
  await expect(page.locator('.result-body')).toContainText('"rows":2000');
  await expect(page.locator('.result-body')).toContainText('"distinct":7');
});

test('a list that missed events while disconnected reloads when the server says reset', async ({ page, request }) => {
  let streams = 0;
  await page.route('**/api/v1/events*', async (route) => {
    streams += 1;
    if (streams === 1) {
      // The page's first stream breaks off at once: the events below pass it by.
      await route.abort();
      return;
    }
    // It comes back claiming a place the server never issued, so what it missed cannot be
    // replayed: the server must say `reset`, and the page must load its list again.
    const headers = { ...route.request().headers(), 'last-event-id': '99999999999999-0' };
    await route.continue({ headers });
  });
  await openHome(page);
  const response = await request.post('/api/v1/tasks', { data: { kind: 'echo', payload: { missed: true } } });
  expect(response.status()).toBe(202);
  const task = await response.json();

  const row = page.locator('li.task').first();
  await expect(row.locator('a.task-link')).toHaveAttribute('href', new RegExp(task.id), { timeout: 15_000 });
  await expect(row.locator('.badge')).toHaveText('succeeded');
  expect(streams).toBeGreaterThanOrEqual(2);
});
