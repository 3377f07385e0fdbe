import { expect, test, type APIRequestContext } from '@playwright/test';

/** Submits `count` tasks to `queue` and returns their ids. */
async function submit(request: APIRequestContext, count: number, task: object): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < count; i++) {
    const response = await request.post('/api/v1/tasks', { data: task });
    expect(response.status()).toBe(202);
    ids.push((await response.json()).id);
  }
  return ids;
}

test('a bulk requeue by filter shows its count first and moves exactly that many', async ({ page, request }) => {
  // A queue of this test's own: the server is shared with the other specs.
  const queue = `bulk-${Date.now()}`;
  const flaky = await submit(request, 3, { kind: 'flaky', payload: { fail_times: -1 }, max_attempts: 1, queue });
  const slow = await submit(request, 2, {
    kind: 'sleep',
    payload: { ms: 5000, steps: 5 },
    timeout_ms: 300,
    max_attempts: 1,
    queue,
  });
  const dead = async () =>
    (await (await request.get(`/api/v1/dead-letters/count?queue=${queue}`)).json()).count as number;
  await expect.poll(dead, { timeout: 15_000 }).toBe(5);
  // Paused, the queue keeps what is requeued waiting, so that the dead letters left stay put.
  expect((await request.post(`/api/v1/queues/${queue}/pause`)).status()).toBe(200);

  await page.goto('/dead-letters');
  const count = page.locator('.bulk-count');
  await expect(count).not.toHaveText('counting…');
  await page.fill('#dl-queue', queue);
  await expect(count).toHaveText('5 dead letters match.');
  await expect(page.locator('li.dead-letter')).toHaveCount(5);
  await page.selectOption('#dl-reason', 'attempts_exhausted');
  await expect(count).toHaveText('3 dead letters match.');
  await expect(page.locator('li.dead-letter')).toHaveCount(3);

  await page.getByRole('button', { name: 'Requeue 3 dead letters' }).click();
  const confirm = page.getByRole('alertdialog');
  await expect(confirm).toContainText('Requeue the 3 dead letters that match, which failed before');
  await confirm.getByRole('button', { name: 'Yes, requeue 3' }).click();
  await expect(page.locator('.notice')).toHaveText('Requeued 3 dead letters.');
  await expect(confirm).toHaveCount(0);
  await expect(count).toHaveText('No dead letter matches.');
  await expect(page.locator('li.dead-letter')).toHaveCount(0);

  // The dead letters of the other filter are still there, and only they.
  await page.selectOption('#dl-reason', '');
  await expect(count).toHaveText('2 dead letters match.');
  await expect(page.locator('li.dead-letter .reason')).toHaveText(['timeout', 'timeout']);
  expect(await dead()).toBe(2);
  const left = await (await request.get(`/api/v1/dead-letters?queue=${queue}`)).json();
  expect(left.dead_letters.map((l: any) => l.task.id).sort()).toEqual([...slow].sort());
  for (const id of flaky) {
    const task = await (await request.get(`/api/v1/tasks/${id}`)).json();
    expect([task.status, task.attempts]).toEqual(['queued', 0]);
  }
});

test('a bulk delete asks first, and cancelling it deletes nothing', async ({ page, request }) => {
  const queue = `bulk-delete-${Date.now()}`;
  const ids = await submit(request, 2, { kind: 'flaky', payload: { fail_times: -1 }, max_attempts: 1, queue });
  const dead = async () =>
    (await (await request.get(`/api/v1/dead-letters/count?queue=${queue}`)).json()).count as number;
  await expect.poll(dead, { timeout: 15_000 }).toBe(2);

  await page.goto('/dead-letters');
  const count = page.locator('.bulk-count');
  await expect(count).not.toHaveText('counting…');
  await page.fill('#dl-queue', queue);
  await expect(count).toHaveText('2 dead letters match.');
  await page.getByRole('button', { name: 'Delete 2 dead letters' }).click();
  await page.getByRole('alertdialog').getByRole('button', { name: 'Cancel' }).click();
  await expect(page.getByRole('alertdialog')).toHaveCount(0);
  expect(await dead()).toBe(2);

  await page.getByRole('button', { name: 'Delete 2 dead letters' }).click();
  await page.getByRole('alertdialog').getByRole('button', { name: 'Yes, delete 2' }).click();
  await expect(page.locator('.notice')).toHaveText('Deleted 2 dead letters.');
  await expect(count).toHaveText('No dead letter matches.');
  for (const id of ids) {
    expect((await request.get(`/api/v1/tasks/${id}`)).status()).toBe(404);
  }
});
