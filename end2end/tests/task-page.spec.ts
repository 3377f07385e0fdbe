import { expect, test } from '@playwright/test';

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
