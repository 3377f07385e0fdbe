import { expect, test } from '@playwright/test';

test('the dead-letter page shows a failed task live and requeues it with a click', async ({ page, request }) => {
  await page.goto('/dead-letters');
  await expect(page.locator('.dead-letters .pending')).toHaveCount(0);

  // A task that runs out of time on its only attempt: a dead letter after half a second.
  const response = await request.post('/api/v1/tasks', {
    data: { kind: 'sleep', payload: { ms: 5000, steps: 5 }, timeout_ms: 500, max_attempts: 1 },
  });
  expect(response.status()).toBe(202);
  const task = await response.json();

  const row = page.locator(`li.dead-letter[data-task-id="${task.id}"]`);
  await expect(row).toBeVisible();
  await expect(row.locator('.kind')).toHaveText('sleep');
  await expect(row.locator('.reason')).toHaveText('timeout');
  await expect(row.locator('.badge')).toHaveText('failed');

  await row.getByRole('button', { name: 'Requeue' }).click();
  // Requeued, it leaves the list while it runs again, then fails again and comes back.
  await expect(row).toHaveCount(0);
  await expect(row).toBeVisible();
  const after = await (await request.get(`/api/v1/tasks/${task.id}`)).json();
  expect(after.status).toBe('failed');
  expect(after.attempts).toBe(1);

  await row.getByRole('button', { name: 'Delete' }).click();
  await expect(row).toHaveCount(0);
  expect((await request.get(`/api/v1/tasks/${task.id}`)).status()).toBe(404);
});

test('a task whose expiry passes while it waits for a retry is an expired dead letter', async ({ page, request }) => {
  await page.goto('/dead-letters');
  await expect(page.locator('.dead-letters .pending')).toHaveCount(0);

  // Its first attempt fails; the retry is due in about a second, its expiry comes first.
  const response = await request.post('/api/v1/tasks', {
    data: { kind: 'flaky', payload: { fail_times: 1 }, max_attempts: 3, ttl_ms: 400 },
  });
  expect(response.status()).toBe(202);
  const task = await response.json();
  expect(task.expires_at).toMatch(/Z$/);

  const row = page.locator(`li.dead-letter[data-task-id="${task.id}"]`);
  await expect(row).toBeVisible();
  await expect(row.locator('.reason')).toHaveText('expired');
  await expect(row.locator('.badge')).toHaveText('failed');

  await page.goto(`/tasks/${task.id}`);
  await expect(page.locator('.record .expires')).toHaveText(task.expires_at);
  await expect(page.locator('.record .badge')).toHaveText('failed');
});
