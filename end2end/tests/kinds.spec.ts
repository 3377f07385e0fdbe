import { expect, test } from '@playwright/test';

const KIND = 'e2e.resize';

test('a kind declared through the API is offered by the form with its example, and its schema is checked in the browser', async ({ page, request }) => {
  const declared = await request.put(`/api/v1/kinds/${KIND}`, {
    data: {
      description: 'Resizes an image to a width (declared by a test).',
      schema: {
        type: 'object',
        required: ['width'],
        additionalProperties: false,
        properties: { width: { type: 'integer', minimum: 1 } },
      },
      example: { width: 640 },
    },
  });
  expect(declared.status()).toBe(201);
  try {
    await page.goto('/');
    // The kinds load once the page is hydrated; the declared one is among them.
    await expect(page.locator(`#kind option[value="${KIND}"]`)).toHaveCount(1);
    const submissions: string[] = [];
    page.on('request', (r) => {
      if (r.method() === 'POST' && r.url().includes('/api/v1/tasks')) submissions.push(r.url());
    });

    await page.selectOption('#kind', KIND);
    await expect(page.locator('.kind-description')).toHaveText('Resizes an image to a width (declared by a test).');
    await expect(page.locator('#payload')).toHaveValue(/"width": 640/);

    await page.fill('#payload', '{"width": "wide"}');
    await page.click('button[type=submit]');
    await expect(page.locator('.field-errors li')).toHaveText(['/width: must be integer']);
    expect(submissions).toEqual([]);
  } finally {
    // The other specs expect the built-in kinds only.
    expect((await request.delete(`/api/v1/kinds/${KIND}`)).status()).toBe(204);
  }
});
