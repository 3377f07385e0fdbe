import { expect, type Page, test } from '@playwright/test';

/**
 * Holds the page's event streams back until `release` is called; `requested` settles once the
 * page has asked for one. What changes meanwhile comes before the stream, as it can when a
 * change lands between a page's first load and its stream's opening.
 */
async function holdEventStreams(page: Page) {
  let release!: () => void;
  const released = new Promise<void>((resolve) => {
    release = resolve;
  });
  let asked!: () => void;
  const requested = new Promise<void>((resolve) => {
    asked = resolve;
  });
  await page.route('**/api/v1/events*', async (route) => {
    asked();
    await released;
    await route.continue();
  });
  return { requested, release };
}

test('the task list catches up with a task that ended before its event stream opened', async ({ page, request }) => {
  const streams = await holdEventStreams(page);
  const firstLoad = page.waitForResponse((r) => r.url().includes('/api/v1/tasks?limit='));
  await page.goto('/');
  await firstLoad;
  await streams.requested;

  const response = await request.post('/api/v1/tasks', { data: { kind: 'echo', payload: { between: true } } });
  expect(response.status()).toBe(202);
  const task = await response.json();
  await expect
    .poll(async () => (await (await request.get(`/api/v1/tasks/${task.id}`)).json()).status, { timeout: 15_000 })
    .toBe('succeeded');
  streams.release();

  const row = page.locator('li.task').first();
  await expect(row.locator('a.task-link')).toHaveAttribute('href', new RegExp(task.id), { timeout: 15_000 });
  await expect(row.locator('.badge')).toHaveText('succeeded');
});

test('a workflow page catches up with an end that came before its event stream opened', async ({ page, request }) => {
  const response = await request.post('/api/v1/workflows', {
    data: { name: 'between', steps: [{ id: 'nap', kind: 'sleep', payload: { ms: 1500, steps: 3 } }] },
  });
  expect(response.status()).toBe(202);
  const workflow = await response.json();
  const url = `/api/v1/workflows/${workflow.id}`;

  const streams = await holdEventStreams(page);
  const firstLoad = page.waitForResponse((r) => r.url().endsWith(url));
  await page.goto(`/workflows/${workflow.id}`);
  await firstLoad;
  await streams.requested;
  await expect(page.locator('.heading .badge')).toHaveText('running');

  await expect
    .poll(async () => (await (await request.get(url)).json()).status, { timeout: 15_000 })
    .toBe('succeeded');
  streams.release();
  await expect(page.locator('.heading .badge')).toHaveText('succeeded', { timeout: 15_000 });
});
