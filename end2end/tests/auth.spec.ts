import { expect, test, type APIRequestContext, type Page } from '@playwright/test';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

// Access control on: this file runs a server of its own (its own redis-server, data directory and
// port), so that the server the other specs share keeps it off.

/** A free loopback port, picked now (the tests' baseURL needs it before they start). */
function freePort(): number {
  const port = execFileSync(process.execPath, [
    '-e',
    // Written raw: console.log colours numbers in Playwright's workers (FORCE_COLOR).
    "const s=require('net').createServer();s.listen(0,'127.0.0.1',()=>{process.stdout.write(String(s.address().port));s.close()})",
  ]);
  return Number(port.toString().trim());
}

const root = resolve(__dirname, '..', '..');
const binary = resolve(root, process.env.COURIER_BIN ?? 'target/release/courier');
const port = freePort();
const redisPort = freePort();
const redisUrl = `redis://127.0.0.1:${redisPort}`;
const base = `http://127.0.0.1:${port}`;

test.use({ baseURL: base });

let dir = '';
let redis: ChildProcess | undefined;
let server: ChildProcess | undefined;
const tokens = { admin: '', reader: '' };

/** Makes a token with the CLI, which prints the token alone on stdout. */
function createToken(name: string, scopes: string): string {
  return execFileSync(binary, ['token', 'create', '--name', name, '--scopes', scopes, '--queues', '*', '--redis-url', redisUrl], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
    .toString()
    .trim();
}

/** Waits until `url` answers at all (any status), or fails after `seconds`. */
async function waitFor(url: string, seconds: number) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    try {
      await fetch(url);
      return;
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`${url} did not answer: ${e}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** Sends SIGTERM and waits for the process to end. */
async function stop(child: ChildProcess | undefined) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const ended = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await ended;
}

test.beforeAll(async () => {
  test.setTimeout(90_000);
  dir = mkdtempSync(join(tmpdir(), 'courier-e2e-auth-'));
  redis = spawn('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], {
    stdio: 'ignore',
  });
  // The first token waits for redis-server to take connections.
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      tokens.admin = createToken('admin', 'submit,read,work,operate,admin');
      break;
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  tokens.reader = createToken('reader', 'read');
  expect(tokens.admin).toMatch(/^cour_/);
  expect(tokens.reader).toMatch(/^cour_/);
  server = spawn(
    binary,
    ['serve', '--addr', `127.0.0.1:${port}`, '--data-dir', dir, '--concurrency', '2', '--redis-url', redisUrl],
    { cwd: root, stdio: 'ignore' },
  );
  await waitFor(`${base}/readyz`, 60);
});

test.afterAll(async () => {
  await stop(server);
  await stop(redis);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** The admin token's Authorization header, for the API calls that set the scene. */
function asAdmin() {
  return { headers: { authorization: `Bearer ${tokens.admin}` } };
}

/** A task submitted with the admin token. */
async function submit(request: APIRequestContext, data: object): Promise<{ id: string }> {
  const response = await request.post('/api/v1/tasks', { data, ...asAdmin() });
  expect(response.status()).toBe(202);
  return response.json();
}

/** A task that runs for a minute unless cancelled. */
function longSleep(request: APIRequestContext) {
  return submit(request, { kind: 'sleep', payload: { ms: 60_000, steps: 60 } });
}

/** A task that fails on its only attempt: a dead letter. */
async function deadLetter(request: APIRequestContext): Promise<{ id: string }> {
  const task = await submit(request, { kind: 'flaky', payload: { fail_times: -1 }, max_attempts: 1 });
  await expect
    .poll(async () => (await (await request.get(`/api/v1/tasks/${task.id}`, asAdmin())).json()).status)
    .toBe('failed');
  return task;
}

/** Opens `path`, is sent to the sign-in page, signs in with `token` and lands back on `path`. */
async function signIn(page: Page, token: string, name: string, path: string) {
  await page.goto(path);
  await expect(page).toHaveURL(/\/sign-in\?next=/);
  await page.getByLabel('Access token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page).toHaveURL(base + path);
  // Once the name shows, the page knows the token's scopes: what is hidden now stays hidden.
  await expect(page.locator('.token-name')).toHaveText(name);
}

test('signed out, every page leads to the sign-in page', async ({ page }) => {
  for (const path of ['/', '/queues', '/dead-letters']) {
    await page.goto(path);
    await expect(page).toHaveURL(`${base}/sign-in?next=${encodeURIComponent(path)}`);
    await expect(page.getByRole('heading', { name: 'Sign in' })).toBeVisible();
    await expect(page.getByLabel('Access token')).toHaveAttribute('type', 'password');
  }
});

test('a wrong token is refused with a message that does not repeat it', async ({ page }) => {
  await page.goto('/queues');
  const wrong = 'cour_notATokenAnyoneWasEverGiven0123456789abcdefg';
  await page.getByLabel('Access token').fill(wrong);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page.getByRole('alert')).toHaveText('That token is unknown, revoked or expired.');
  expect(page.url()).not.toContain('notAToken');
  await expect(page.locator('body')).not.toContainText('notAToken');
  // The form still leads where the person was going.
  await page.getByLabel('Access token').fill(tokens.reader);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page).toHaveURL(`${base}/queues`);
});

test('a read-only token sees tasks but no cancel, requeue, pause or submit form', async ({ page, request }) => {
  const running = await longSleep(request);
  const dead = await deadLetter(request);

  await signIn(page, tokens.reader, 'reader', `/tasks/${running.id}`);
  await expect(page.locator('.record .kind')).toHaveText('sleep');
  await expect(page.locator('.record .badge')).toHaveText('running');
  await expect(page.getByRole('button', { name: 'Cancel task' })).toHaveCount(0);
  await expect(page.getByRole('link', { name: 'Audit' })).toHaveCount(0);

  await page.goto('/');
  await expect(page.locator(`li.task[data-task-id="${running.id}"] .kind`)).toHaveText('sleep');
  await expect(page.locator('.token-name')).toHaveText('reader');
  await expect(page.getByRole('heading', { name: 'Submit a task' })).toHaveCount(0);
  await expect(page.locator('#payload')).toHaveCount(0);

  await page.goto('/dead-letters');
  const letter = page.locator(`li.dead-letter[data-task-id="${dead.id}"]`);
  await expect(letter.locator('.badge')).toHaveText('failed');
  await expect(page.locator('.token-name')).toHaveText('reader');
  await expect(letter.getByRole('button')).toHaveCount(0);
  await expect(page.locator('.bulk-count')).toHaveText(/dead letters? match/);
  await expect(page.locator('.bulk').getByRole('button')).toHaveCount(0);

  await page.goto('/queues');
  const queue = page.locator('tr.queue[data-queue="default"]');
  await expect(queue.locator('.state')).toHaveText('active');
  await expect(page.locator('.token-name')).toHaveText('reader');
  await expect(queue.getByRole('button')).toHaveCount(0);

  // The page hides what the API would refuse anyway.
  const refused = await page.evaluate(async (id) => (await fetch(`/api/v1/tasks/${id}`, { method: 'DELETE' })).status, running.id);
  expect(refused).toBe(403);
  await request.delete(`/api/v1/tasks/${running.id}`, asAdmin());
});

test('an admin token sees every control, and the audit page lists the cancel it made', async ({ page, request }) => {
  const running = await longSleep(request);
  const dead = await deadLetter(request);

  await signIn(page, tokens.admin, 'admin', `/tasks/${running.id}`);
  await expect(page.locator('.record .badge')).toHaveText('running');
  await page.getByRole('button', { name: 'Cancel task' }).click();
  await expect(page.locator('.record .badge')).toHaveText('cancelled');
  await expect(page.getByRole('button', { name: 'Cancel task' })).toHaveCount(0);

  await page.goto('/');
  await expect(page.getByRole('heading', { name: 'Submit a task' })).toBeVisible();
  await expect(page.locator('#kind option')).toHaveCount(5);

  await page.goto('/dead-letters');
  const letter = page.locator(`li.dead-letter[data-task-id="${dead.id}"]`);
  await expect(letter.getByRole('button', { name: 'Requeue' })).toBeVisible();
  await expect(letter.getByRole('button', { name: 'Delete' })).toBeVisible();
  await expect(page.locator('.bulk').getByRole('button', { name: /^Requeue \d+ dead letters?$/ })).toBeVisible();
  await expect(page.locator('.bulk').getByRole('button', { name: /^Delete \d+ dead letters?$/ })).toBeVisible();

  await page.goto('/queues');
  await expect(page.locator('tr.queue[data-queue="default"]').getByRole('button', { name: 'Pause' })).toBeVisible();

  await page.getByRole('link', { name: 'Audit' }).click();
  await expect(page).toHaveURL(`${base}/audit`);
  await expect(page.getByRole('heading', { name: 'Audit trail' })).toBeVisible();
  const cancel = page.locator('tr.audit-entry', { hasText: running.id });
  await expect(cancel.locator('.action')).toHaveText('task.cancel');
  await expect(cancel.locator('.actor')).toHaveText('admin');
  await expect(cancel.locator('.at')).toHaveText(/^\d{4}-\d\d-\d\dT/);
  // Newest first: the cancel comes before the tokens the CLI made at the start.
  const actions = await page.locator('tr.audit-entry .action').allTextContents();
  expect(actions.indexOf('task.cancel')).toBeLessThan(actions.indexOf('token.create'));
  await expect(page.getByRole('button', { name: 'Load more' })).toHaveCount(0);

  // Past a page of actions, the oldest come with "Load more".
  for (let i = 0; i < 30; i++) {
    expect((await request.post('/api/v1/queues/e2e-audit/pause', asAdmin())).status()).toBe(200);
    expect((await request.post('/api/v1/queues/e2e-audit/resume', asAdmin())).status()).toBe(200);
  }
  await page.reload();
  await expect(page.locator('tr.audit-entry')).toHaveCount(50);
  await expect(page.locator('tr.audit-entry .action').first()).toHaveText('queue.resume');
  await expect(page.locator('tr.audit-entry', { hasText: 'reader' })).toHaveCount(0);
  await page.getByRole('button', { name: 'Load more' }).click();
  await expect(page.locator('tr.audit-entry')).toHaveCount(actions.length + 60);
  await expect(page.locator('tr.audit-entry').last().locator('.target')).toHaveText('admin');
  await expect(page.getByRole('button', { name: 'Load more' })).toHaveCount(0);
});

test('signing out ends the session: the next page load is the sign-in page', async ({ page, context }) => {
  await signIn(page, tokens.reader, 'reader', '/queues');
  const cookies = await context.cookies();
  expect(cookies.map((c) => c.name)).toContain('courier-session');
  const session = cookies.find((c) => c.name === 'courier-session')!;
  expect(session.httpOnly).toBe(true);
  expect(session.sameSite).toBe('Strict');

  await page.getByRole('button', { name: 'Sign out' }).click();
  await expect(page).toHaveURL(`${base}/sign-in`);
  await page.goto('/');
  await expect(page).toHaveURL(`${base}/sign-in?next=%2F`);

  // The old cookie, put back, opens nothing: the session is gone on the server.
  await context.addCookies([session]);
  await page.goto('/queues');
  await expect(page).toHaveURL(`${base}/sign-in?next=%2Fqueues`);
});
