import { expect, test } from '@playwright/test';

test('the topics page lists subscriptions and publishes a message from its form', async ({ page, request }) => {
  const topic = `orders-${Date.now()}`;
  const put = await request.put(`/api/v1/topics/${topic}/subscriptions/audit`, {
    data: { kind: 'echo', filter: { region: { equals: 'eu' } } },
  });
  expect(put.status()).toBe(201);
  await request.put(`/api/v1/topics/${topic}/subscriptions/us-only`, {
    data: { kind: 'echo', filter: { region: { equals: 'us' } } },
  });

  await page.goto('/topics');
  const card = page.locator(`.topic[data-topic="${topic}"]`);
  await expect(card.locator('tr.subscription')).toHaveCount(2);
  await expect(card.locator('tr.subscription[data-name="audit"] .kind')).toHaveText('echo');

  await page.fill('#topic', topic);
  await page.fill('#message-payload', '{"order": 12}');
  await page.fill('#properties', '{"region": "eu"}');
  await page.click('form.publish button[type=submit]');

  const published = page.locator('.published');
  await expect(published).toContainText('1 task(s) created');
  await expect(published.locator('li')).toContainText('audit →');
  await expect(card.locator('.counts')).toContainText('1 messages');

  await published.locator('li a').click();
  await expect(page.locator('.record .badge')).toHaveText('succeeded');
  await expect(page.locator('.result-body')).toContainText('{"order":12}');
});
