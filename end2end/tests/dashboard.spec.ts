import { expect, test, type APIRequestContext } from '@playwright/test';

/** Sends `count` tasks of `kind` with `payload` to `queue` in one batch, and returns their ids. */
async function submitMany(request: APIRequestContext, queue: string, kind: string, payload: object, count: number) {
  const tasks = Array.from({ length: count }, () => ({ kind, payload, queue, max_attempts: 1 }));
  const response = await request.post('/api/v1/tasks/batch', { data: { tasks } });
  expect(response.status()).toBe(202);
  return (await response.json()).tasks.map((t: { id: string }) => t.id);
}

/** The succeeded tasks the throughput chart draws. */
async function drawnSucceeded(page: import('@playwright/test').Page): Promise<number> {
  return Number(await page.locator('svg.chart.throughput').getAttribute('data-succeeded'));
}

test('the dashboard throughput chart moves while tasks run, and its counts match the API', async ({ page, request }) => {
  await page.goto('/dashboard');
  const chart = page.locator('svg.chart.throughput');
  await expect(chart).toBeVisible();
  const before = await drawnSucceeded(page);

  // Tasks ending over a few seconds: the live chart counts each of them, without a reload.
  await submitMany(request, 'e2e-dash', 'sleep', { ms: 300, steps: 1 }, 12);
  await expect.poll(() => drawnSucceeded(page), { timeout: 20_000 }).toBeGreaterThanOrEqual(before + 12);
  // And the line itself changed shape: some point is above the baseline.
  const points = await chart.locator('polyline.succeeded').getAttribute('points');
  const baseline = Math.max(...points!.split(' ').map((p) => Number(p.split(',')[1])));
  expect(points!.split(' ').some((p) => Number(p.split(',')[1]) < baseline)).toBe(true);

  // Dead letters stay put: the queue's row shows what the API counts.
  await submitMany(request, 'e2e-dash', 'flaky', { fail_times: -1 }, 3);
  const row = page.locator('table.dashboard-queues tr[data-queue="e2e-dash"]');
  await expect(row.locator('.dead')).toHaveText('3');
  const stats = await (await request.get('/api/v1/stats?spans=second')).json();
  const queue = stats.queues.find((q: { queue: string }) => q.queue === 'e2e-dash');
  for (const state of ['queued', 'scheduled', 'retrying', 'dead']) {
    await expect(row.locator(`.${state}`)).toHaveText(String(queue.counts[state]));
  }
  // The wait and run time chart has the samples the API has.
  await expect(page.locator('svg.chart.latency')).toBeVisible();

  // The longer spans are a click away, with the same tasks in them.
  await page.getByRole('button', { name: '24 hours' }).click();
  await expect(page.getByRole('button', { name: '24 hours' })).toHaveAttribute('aria-pressed', 'true');
  await expect.poll(() => drawnSucceeded(page)).toBeGreaterThanOrEqual(before + 12);
  await page.getByRole('button', { name: '30 days' }).click();
  await expect.poll(() => drawnSucceeded(page)).toBeGreaterThanOrEqual(before + 12);

  if (process.env.COURIER_SCREENSHOTS) {
    await page.getByRole('button', { name: '15 minutes' }).click();
    await page.screenshot({ path: `${process.env.COURIER_SCREENSHOTS}/dashboard.png`, fullPage: true });
  }
});

test('the workers page shows the running worker and links the tasks it runs', async ({ page, request }) => {
  await page.goto('/workers');
  const row = page.locator('tr.worker').first();
  await expect(row).toBeVisible();
  await expect(row.locator('td').nth(1)).toHaveText('built-in');
  const [id] = await submitMany(request, 'e2e-workers', 'sleep', { ms: 4000, steps: 4 }, 1);
  // The running task shows under its worker, linked to its page.
  const link = page.locator(`tr.worker a[href="/tasks/${id}"]`);
  await expect(link).toBeVisible();
  if (process.env.COURIER_SCREENSHOTS) {
    await page.screenshot({ path: `${process.env.COURIER_SCREENSHOTS}/workers.png`, fullPage: true });
  }
  await link.click();
  await expect(page).toHaveURL(new RegExp(`/tasks/${id}$`));
});
