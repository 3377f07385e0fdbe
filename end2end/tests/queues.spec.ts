import { expect, test, type APIRequestContext, type Page } from '@playwright/test';

/** A task's status, asked of the API. */
async function statusOf(request: APIRequestContext, id: string): Promise<string> {
  const response = await request.get(`/api/v1/tasks/${id}`);
  return (await response.json()).status;
}

test('a task sent to a paused queue waits there until Resume is clicked on the queues page', async ({ page, request }) => {
  // Pausing a queue nobody has used yet creates it, paused.
  const paused = await request.post('/api/v1/queues/e2e-q/pause');
  expect(paused.status()).toBe(200);
  expect((await paused.json()).paused).toBe(true);
  const submit = () => request.post('/api/v1/tasks', { data: { kind: 'echo', payload: { held: true }, queue: 'e2e-q' } });
  const response = await submit();
  expect(response.status()).toBe(202);
  const task = await response.json();
  expect(task.queue).toBe('e2e-q');

  await page.goto('/queues');
  const row = page.locator('tr.queue[data-queue="e2e-q"]');
  await expect(row).toHaveClass(/\bpaused\b/);
  await expect(row.locator('.state')).toHaveText('paused');
  await expect(row.locator('.queued-total')).toHaveText('1');
  expect(await statusOf(request, task.id)).toBe('queued');

  // The page follows the event stream: a second task shows up without a reload.
  const second = await (await submit()).json();
  await expect(row.locator('.queued-total')).toHaveText('2');

  await row.getByRole('button', { name: 'Resume' }).click();
  await expect(row).not.toHaveClass(/\bpaused\b/);
  await expect(row.locator('.state')).toHaveText('active');
  await expect(row.getByRole('button')).toHaveText('Pause');
  await expect(row.locator('.queued-total')).toHaveText('0');
  await expect.poll(() => statusOf(request, task.id)).toBe('succeeded');
  await expect.poll(() => statusOf(request, second.id)).toBe('succeeded');

  // Paused and resumed by someone else, the row follows too.
  expect((await request.post('/api/v1/queues/e2e-q/pause')).status()).toBe(200);
  await expect(row.locator('.state')).toHaveText('paused');
  expect((await request.post('/api/v1/queues/e2e-q/resume')).status()).toBe(200);
  await expect(row.locator('.state')).toHaveText('active');
});

/** Opens the home page and waits until it is hydrated and the kinds have loaded. */
async function openHome(page: Page) {
  await page.goto('/');
  await expect(page.locator('.kind-description')).not.toBeEmpty();
}

test('the form fills in the kind’s queue and refuses an invalid queue name without submitting', async ({ page }) => {
  await openHome(page);
  const submissions: string[] = [];
  page.on('request', (request) => {
    if (request.method() === 'POST' && request.url().includes('/api/v1/tasks')) submissions.push(request.url());
  });
  await expect(page.locator('#queue')).toHaveValue('default');
  // Another kind puts back its own queue.
  await page.fill('#queue', 'elsewhere');
  await page.selectOption('#kind', 'sleep');
  await expect(page.locator('#queue')).toHaveValue('default');

  await page.fill('#queue', 'Bad Name');
  await page.click('button[type=submit]');
  await expect(page.locator('#queue-errors li')).toContainText('“Bad Name” is not a queue name');
  await expect(page.locator('#queue')).toHaveAttribute('aria-invalid', 'true');
  expect(submissions).toEqual([]);
});

test('a task sent from the form to a named queue shows its queue in the list and on its page', async ({ page }) => {
  await openHome(page);
  await expect(page.locator('#queue')).toHaveValue('default');
  await page.fill('#payload', '{"sent": "to a named queue"}');
  await page.fill('#queue', 'e2e-form');
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === 'POST' && r.url().endsWith('/api/v1/tasks')),
    page.click('button[type=submit]'),
  ]);
  expect(response.status()).toBe(202);
  const task = await response.json();
  expect(task.queue).toBe('e2e-form');

  const row = page.locator(`li.task[data-task-id="${task.id}"]`);
  await expect(row.locator('.task-queue')).toHaveText('e2e-form');
  await expect(row.locator('.badge')).toHaveText('succeeded');
  await row.locator('a.task-link').click();
  await expect(page.locator('.record .queue')).toHaveText('e2e-form');
  await expect(page.locator('.record .badge')).toHaveText('succeeded');
});
