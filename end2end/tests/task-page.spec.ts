import { expect, test } from '@playwright/test';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/** Runs `redis-cli` against the server's own redis-server (its data directory says where). */
function redisCli(...args: string[]): string {
  const running = JSON.parse(readFileSync(join(process.env.COURIER_E2E_DATA!, 'redis', 'courier-redis.json'), 'utf8'));
  const login = ['--user', 'courier', '--pass', running.password, '--no-auth-warning'];
  return execFileSync('redis-cli', ['-p', String(running.port), ...login, ...args]).toString().trim();
}

test('the task page shows a JSON result pretty-printed, folding each object and array', async ({ page, request }) => {
  const response = await request.post('/api/v1/tasks', {
    data: { kind: 'echo', payload: { greeting: 'hello', nested: { count: 3, list: [1, 2] } } },
  });
  expect(response.status()).toBe(202);
  const task = await response.json();
  await page.goto(`/tasks/${task.id}`);
  await expect(page.locator('.record .badge')).toHaveText('succeeded');

  const tree = page.locator('.result .json-tree');
  // One member a line, as JSON is pretty-printed.
  await expect(tree.locator('.json-line').first()).toHaveText('"greeting": "hello",');
  const nested = tree.locator('details.json-node details.json-node').first();
  await expect(nested.locator('summary').first()).toContainText('"nested": {');
  await expect(nested.locator('.json-line', { hasText: '"count"' })).toHaveText('"count": 3,');
  // Deeper down, an array starts folded, saying what it holds.
  const list = nested.locator('details.json-node');
  await expect(list.locator('summary')).toHaveText(/"list": \[…\]\s*2 items/);
  await expect(list.locator('.json-number').first()).toBeHidden();
  await list.locator('summary').click();
  await expect(list.locator('.json-number')).toHaveText(['1', '2']);
  await expect(list.locator('.json-number').first()).toBeVisible();
  // Folding the object hides its members.
  await nested.locator('summary').first().click();
  await expect(nested.locator('.json-line', { hasText: '"count"' })).toBeHidden();
  await expect(nested.locator('summary').first()).toContainText('2 keys');

  // The payload is shown too, the same way.
  await expect(page.locator('.payload .json-tree .json-string').first()).toHaveText('"hello"');
});

test('a csv.summary result is a table, a text.stats result two', async ({ page, request }) => {
  const csv = 'city,temperature\nOslo,3.5\nLima,19\nOslo,12.25\n';
  const response = await request.post('/api/v1/tasks?kind=csv.summary', {
    headers: { 'content-type': 'text/csv' },
    data: csv,
  });
  expect(response.status()).toBe(202);
  const task = await response.json();
  await page.goto(`/tasks/${task.id}`);
  await expect(page.locator('.record .badge')).toHaveText('succeeded');

  const table = page.locator('table.csv-summary');
  await expect(table.locator('caption')).toHaveText('3 rows, 2 columns');
  await expect(table.locator('thead th')).toHaveText(['Column', 'Type', 'Min', 'Max', 'Mean', 'Distinct', 'Blanks']);
  const rows = table.locator('tbody tr');
  await expect(rows).toHaveCount(2);
  await expect(rows.nth(0).locator('th')).toHaveText('city');
  await expect(rows.nth(0).locator('td')).toHaveText(['text', 'Lima', 'Oslo', '—', '2', '0']);
  await expect(rows.nth(1).locator('th')).toHaveText('temperature');
  await expect(rows.nth(1).locator('td')).toHaveText(['number', '3.5', '19', '11.5833', '3', '0']);
  // The uploaded file is text: shown as it is.
  await expect(page.locator('.payload .payload-body')).toHaveText(csv);

  const stats = await (
    await request.post('/api/v1/tasks', { data: { kind: 'text.stats', payload: 'to be or not to be' } })
  ).json();
  await page.goto(`/tasks/${stats.id}`);
  await expect(page.locator('table.text-stats tbody tr')).toHaveText([/Lines\s*1/, /Words\s*6/, /Characters\s*18/]);
  const words = page.locator('table.top-words tbody tr');
  await expect(words.first().locator('td')).toHaveText(['be', '2']);
  await expect(words).toHaveCount(4);
});

test('the attempts are a timeline with their outcomes, errors and workers', async ({ page, request }) => {
  const response = await request.post('/api/v1/tasks', {
    data: { kind: 'flaky', payload: { fail_times: 1 }, max_attempts: 3 },
  });
  expect(response.status()).toBe(202);
  const task = await response.json();
  await page.goto(`/tasks/${task.id}`);
  await expect(page.locator('.record .badge')).toHaveText('succeeded');

  const attempts = page.locator('.timeline li.attempt');
  await expect(attempts).toHaveCount(2);
  await expect(attempts.locator('.attempt-number')).toHaveText(['Attempt 1', 'Attempt 2']);
  await expect(attempts.locator('.badge')).toHaveText(['retried', 'succeeded']);
  await expect(attempts.first().locator('.attempt-error')).toHaveText('flaky: attempt 1 failed on purpose');
  await expect(attempts.nth(1).locator('.attempt-error')).toHaveCount(0);
  for (const attempt of await attempts.all()) {
    await expect(attempt.locator('.worker')).toHaveText(/^worker-/);
    await expect(attempt.locator('time.started')).toHaveText(/Z$/);
    await expect(attempt.locator('time.ended')).toHaveText(/Z$/);
  }
});

test('a payload too large to show is a download link, and once released the page says why', async ({ page, request }) => {
  const text = 'too large to show '.repeat(20_000);
  const response = await request.post('/api/v1/tasks?kind=text.stats', {
    headers: { 'content-type': 'text/plain' },
    data: text,
  });
  expect(response.status()).toBe(202);
  const task = await response.json();
  await page.goto(`/tasks/${task.id}`);
  await expect(page.locator('.record .badge')).toHaveText('succeeded');
  const payload = page.locator('.payload');
  await expect(payload.locator('.hint')).toContainText('351.6 KiB — too large to show here.');
  const link = payload.locator('a.download');
  await expect(link).toHaveText('Download (351.6 KiB)');
  const download = await request.get((await link.getAttribute('href'))!);
  expect((await download.body()).length).toBe(text.length);

  // Released as `--payload-retention` releases a succeeded task's payload: the page says so
  // rather than offering a link to nothing.
  const key = redisCli('--scan', '--pattern', `courier:*:payload:${task.id}`);
  expect(key).toContain(task.id);
  expect(redisCli('DEL', key)).toBe('1');
  await page.reload();
  await expect(payload.locator('.error')).toHaveText(/no longer kept.*--payload-retention/);
  await expect(payload.locator('a.download')).toHaveCount(0);
  await expect(page.locator('table.text-stats tbody tr').first()).toHaveText(/Lines\s*1/);
});
