import { expect, test } from '@playwright/test';

/** `2026-11-30T23:04:38.000Z` as the page shows it: `11-30 23:04:38`. */
const shortTime = (at: string) => at.slice(5, 19).replace('T', ' ');

test('the schedules page lists next runs; Pause, Resume and Run now work and the run links to its task', async ({ page, request }) => {
  const put = await request.put('/api/v1/schedules/e2e-nightly', {
    data: { cron: '30 2 * * *', timezone: 'Europe/Paris', task: { kind: 'echo', payload: { nightly: true } } },
  });
  expect(put.status()).toBe(201);
  const schedule = await put.json();
  expect(schedule.next_runs).toHaveLength(5);

  await page.goto('/schedules');
  const row = page.locator('tr.schedule[data-schedule="e2e-nightly"]');
  await expect(row.locator('.timing')).toHaveText('30 2 * * * (Europe/Paris)');
  await expect(row.locator('.next-runs li')).toHaveText(schedule.next_runs.map(shortTime));
  await expect(row.locator('.last-run')).toHaveText('never');

  await row.getByRole('button', { name: 'Pause' }).click();
  await expect(row.locator('.state')).toHaveText('paused');
  await expect(row.locator('.next-runs li')).toHaveCount(0);
  expect((await (await request.get('/api/v1/schedules/e2e-nightly')).json()).paused).toBe(true);
  await row.getByRole('button', { name: 'Resume' }).click();
  await expect(row.locator('.state')).toHaveText('active');
  await expect(row.locator('.next-runs li')).toHaveCount(5);
  expect((await (await request.get('/api/v1/schedules/e2e-nightly')).json()).paused).toBe(false);

  await row.getByRole('button', { name: 'Run now' }).click();
  const link = row.locator('a.run-link');
  await expect(link).toContainText('(by hand)');
  await expect(row.locator('.last-run .badge')).toHaveText('succeeded');
  const view = await (await request.get('/api/v1/schedules/e2e-nightly')).json();
  expect(view.last_run.manual).toBe(true);
  await link.click();
  await expect(page).toHaveURL(new RegExp(`/tasks/${view.last_run.task_id}$`));
  await expect(page.locator('.record .badge')).toHaveText('succeeded');

  expect((await request.delete('/api/v1/schedules/e2e-nightly')).status()).toBe(204);
});

test('a schedule’s ticks show up on the page as they run, each linked to its task', async ({ page, request }) => {
  const put = await request.put('/api/v1/schedules/e2e-every-second', {
    data: { every: '1s', task: { kind: 'echo', payload: 'tick', queue: 'e2e-ticks' } },
  });
  expect(put.status()).toBe(201);
  await page.goto('/schedules');
  const row = page.locator('tr.schedule[data-schedule="e2e-every-second"]');
  await expect(row.locator('.timing')).toHaveText('every 1s');
  const link = row.locator('a.run-link');
  await expect(link).toBeVisible();
  await expect(link).not.toContainText('(by hand)');
  const first = await link.getAttribute('href');
  // The next tick replaces it, without a reload of the page.
  await expect(link).not.toHaveAttribute('href', first!);
  expect((await request.delete('/api/v1/schedules/e2e-every-second')).status()).toBe(204);
});
