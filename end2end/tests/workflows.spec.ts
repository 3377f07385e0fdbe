import { expect, test } from '@playwright/test';

test('a workflow graph shows each step change state live, linked to its task', async ({ page, request }) => {
  // The first step sleeps long enough to be seen running, the second waits for it.
  const response = await request.post('/api/v1/workflows', {
    data: {
      name: 'graph',
      steps: [
        { id: 'nap', kind: 'sleep', payload: { ms: 3000, steps: 6 } },
        { id: 'a', kind: 'echo', after: ['nap'], payload: { x: 1 } },
        { id: 'b', kind: 'echo', after: ['nap'], payload: { y: 2 } },
        { id: 'join', kind: 'echo', after: ['a', 'b'], payload: [{ $from: 'a' }, { $from: 'b' }] },
      ],
    },
  });
  expect(response.status()).toBe(202);
  const workflow = await response.json();
  await page.goto(`/workflows/${workflow.id}`);
  const step = (id: string) => page.locator(`.workflow-graph [data-step="${id}"]`);

  await expect(page.locator('.workflow-graph .step')).toHaveCount(4);
  await expect(page.locator('.workflow-graph .edge')).toHaveCount(4);
  await expect(step('nap')).toHaveAttribute('data-state', 'running');
  await expect(step('join')).toHaveAttribute('data-state', 'waiting');
  // No reload: the page follows the workflow's events.
  await expect(step('join')).toHaveAttribute('data-state', 'succeeded', { timeout: 20_000 });
  await expect(page.locator('.heading .badge')).toHaveText('succeeded');
  for (const id of ['nap', 'a', 'b']) {
    await expect(step(id)).toHaveAttribute('data-state', 'succeeded');
  }
  // A step links to its task.
  const view = await (await request.get(`/api/v1/workflows/${workflow.id}`)).json();
  const joinTask = view.steps.find((s: { id: string }) => s.id === 'join').tasks[0];
  await expect(step('join')).toHaveAttribute('data-href', `/tasks/${joinTask}`);
  await step('join').click();
  await expect(page).toHaveURL(`/tasks/${joinTask}`);
});

test('the home page submits a workflow written as JSON, and a failed one names its step', async ({ page }) => {
  await page.goto('/');
  await page.locator('.workflow-form summary').click();
  const doomed = {
    name: 'doomed',
    steps: [
      { id: 'first', kind: 'echo', payload: 1 },
      { id: 'breaks', kind: 'flaky', after: ['first'], payload: { fail_times: -1 }, max_attempts: 1 },
    ],
  };
  await page.locator('#workflow').fill(JSON.stringify(doomed));
  await page.getByRole('button', { name: 'Submit workflow' }).click();
  const link = page.locator('.workflow-form .created a');
  await expect(link).toBeVisible();
  await link.click();
  await expect(page.locator('.heading .badge')).toHaveText('failed', { timeout: 20_000 });
  await expect(page.locator('.workflow-error')).toContainText('step `breaks` failed');
  await expect(page.locator('[data-step="breaks"]')).toHaveAttribute('data-state', 'failed');

  // A definition with a cycle is refused, and the form says why.
  await page.goto('/');
  await page.locator('.workflow-form summary').click();
  const cycle = { steps: [{ id: 'x', kind: 'echo', after: ['y'] }, { id: 'y', kind: 'echo', after: ['x'] }] };
  await page.locator('#workflow').fill(JSON.stringify(cycle));
  await page.getByRole('button', { name: 'Submit workflow' }).click();
  await expect(page.locator('.workflow-form .submit-error')).toContainText('cycle');

  // The list shows both kinds of end.
  await page.goto('/workflows');
  await expect(page.locator('.workflow-table tr.workflow', { hasText: 'doomed' }).locator('.badge')).toHaveText('failed');
});
