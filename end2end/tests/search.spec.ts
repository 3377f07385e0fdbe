import { expect, test } from '@playwright/test';

test('task search finds a task by kind and status, or by the beginning of its id', async ({ page, request }) => {
  // A queue of this test's own: the server is shared with the other specs.
  const queue = `search-${Date.now()}`;
  const failed = await (
    await request.post('/api/v1/tasks', {
      data: { kind: 'flaky', payload: { fail_times: -1 }, max_attempts: 1, queue },
    })
  ).json();
  const echo = await (await request.post('/api/v1/tasks', { data: { kind: 'echo', payload: 'hi', queue } })).json();
  for (const [id, status] of [
    [failed.id, 'failed'],
    [echo.id, 'succeeded'],
  ]) {
    await expect
      .poll(async () => (await (await request.get(`/api/v1/tasks/${id}`)).json()).status, { timeout: 15_000 })
      .toBe(status);
  }

  await page.goto('/');
  await page.locator('header nav').getByRole('link', { name: 'Search', exact: true }).click();
  await expect(page).toHaveURL(/\/search$/);
  await expect(page.locator('#search-kind option[value="flaky"]')).toHaveCount(1);
  await page.fill('#search-queue', queue);
  await page.selectOption('#search-kind', 'flaky');
  await page.selectOption('#search-status', 'failed');
  await page.getByRole('button', { name: 'Search' }).click();

  await expect(page).toHaveURL(new RegExp(`/search\\?kind=flaky&status=failed&queue=${queue}$`));
  const results = page.locator('.search-results li.task');
  await expect(results).toHaveCount(1);
  await expect(results.first()).toHaveAttribute('data-task-id', failed.id);
  await expect(results.first().locator('.badge')).toHaveText('failed');
  await expect(page.locator('.search-count')).toHaveText('1 task');

  await page.selectOption('#search-status', 'succeeded');
  await page.getByRole('button', { name: 'Search' }).click();
  await expect(page.locator('.search-count')).toHaveText('No task matches.');

  // The beginning of an id (its first 24 characters: past its time, into its random bits).
  await page.reload();
  await expect(page.locator('.search-count')).toHaveText('No task matches.');
  await page.selectOption('#search-kind', '');
  await page.selectOption('#search-status', '');
  await page.fill('#search-queue', '');
  await page.fill('#search-id', echo.id.slice(0, 24));
  await page.getByRole('button', { name: 'Search' }).click();
  await expect(results).toHaveCount(1);
  await expect(results.first()).toHaveAttribute('data-task-id', echo.id);
  await results.first().locator('a.task-link').click();
  await expect(page).toHaveURL(`/tasks/${echo.id}`);
  await expect(page.locator('.record .kind')).toHaveText('echo');
});
