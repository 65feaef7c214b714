// OpenTelemetry: the spans and metrics of a lock's life, read with the SDK's in-memory exporters, against a real
// database: a call, two calls contending, a lost lock, an adapter's run, a fleet. And the core without the API.
import { context, metrics, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import {
  AggregationTemporality,
  InMemoryMetricExporter,
  MeterProvider,
  PeriodicExportingMetricReader,
} from '@opentelemetry/sdk-metrics';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import knexFactory from 'knex';
import { afterAll, expect, test } from 'vitest';
import { fleet, latest } from '../adapters/knex.js';
import { MigrationLockBusyError, MigrationLockLostError, migrateEach, withMigrationLock } from '../src/index.js';
import { prepareTenants, schemaTargets } from './fixtures/fleet/tenants.js';
import { createTestDatabase, fixture, sleep, spawnNode, withClient } from './helpers.js';

const spans = new InMemorySpanExporter();
const tracerProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(spans)] });
trace.setGlobalTracerProvider(tracerProvider);
// As the SDK for Node sets up: the active span follows async code, so spans nest.
context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
const metricExporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE);
const reader = new PeriodicExportingMetricReader({ exporter: metricExporter, exportIntervalMillis: 3_600_000 });
const meterProvider = new MeterProvider({ readers: [reader] });
metrics.setGlobalMeterProvider(meterProvider);
afterAll(async () => {
  await Promise.all([tracerProvider.shutdown(), meterProvider.shutdown()]);
  // The suite's files share their worker's process: the next one must find no provider set.
  trace.disable();
  metrics.disable();
  context.disable();
});

const [url, knexUrl, fleetUrl] = await Promise.all([createTestDatabase(), createTestDatabase(), createTestDatabase()]);
const database = (u: string) => new URL(u).pathname.slice(1);
const quiet = { logger: null };

/** The finished spans named `pg_migration_lock.<name>` on `key`. */
const spansOf = (name: string, key: bigint | string): ReadableSpan[] =>
  spans
    .getFinishedSpans()
    .filter((s) => s.name === `pg_migration_lock.${name}` && s.attributes['pg_migration_lock.key'] === String(key));

/** The data points of metric `name` now, whose attributes include `match`. */
async function points(name: string, match: Record<string, unknown>) {
  await reader.forceFlush();
  const last = metricExporter.getMetrics().at(-1);
  const metric = last?.scopeMetrics.flatMap((s) => s.metrics).find((m) => m.descriptor.name === name);
  return (metric?.dataPoints ?? []).filter((p) =>
    Object.entries(match).every(([attribute, value]) => p.attributes[attribute] === value),
  ) as { attributes: Record<string, unknown>; value: unknown }[];
}
const histogram = (p: { value: unknown }) => p.value as { count: number; sum: number };

test('a call: a wait span, then a hold span with the pid and the database; durations in seconds', async () => {
  const pid = await withMigrationLock(
    url,
    901n,
    async ({ client }) => {
      trace.getTracer('app').startSpan('app.work').end();
      await sleep(150);
      return (await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
    },
    quiet,
  );
  const [wait] = spansOf('wait', 901n);
  const [hold] = spansOf('hold', 901n);
  expect(wait?.attributes).toMatchObject({ 'pg_migration_lock.outcome': 'acquired', 'pg_migration_lock.pid': pid });
  expect(hold?.attributes).toMatchObject({
    'pg_migration_lock.key': '901',
    'pg_migration_lock.pid': pid,
    'pg_migration_lock.outcome': 'released',
    'db.system': 'postgresql',
    'db.namespace': database(url),
    'server.address': new URL(url).hostname,
    'server.port': Number(new URL(url).port),
  });
  // Never the user nor the password.
  expect(Object.values(hold!.attributes)).not.toContain(decodeURIComponent(new URL(url).password));
  expect(Object.keys(hold!.attributes).filter((name) => /user|password/.test(name))).toEqual([]);
  expect(hold?.status.code).not.toBe(2);
  // The hold span is active while fn runs: the app's spans there are its children.
  const work = spans.getFinishedSpans().find((s) => s.name === 'app.work');
  expect(work?.parentSpanContext?.spanId).toBe(hold!.spanContext().spanId);
  expect(wait?.attributes['db.namespace']).toBe(database(url));
  const [held] = await points('pg_migration_lock.hold.duration', { 'pg_migration_lock.key': '901' });
  expect(histogram(held!).count).toBe(1);
  expect(histogram(held!).sum).toBeGreaterThanOrEqual(0.14);
  expect(histogram(held!).sum).toBeLessThan(30);
  const [waited] = await points('pg_migration_lock.wait.duration', { 'pg_migration_lock.key': '901' });
  expect(histogram(waited!).count).toBe(1);
});

test('two calls contending: the waiter’s wait span lasts until the first releases; a no-wait call is busy', async () => {
  let holding!: () => void;
  const held = new Promise<void>((resolve) => (holding = resolve));
  let fnEndedAt = 0;
  const first = withMigrationLock(
    url,
    902n,
    async () => {
      holding();
      await sleep(1000);
      fnEndedAt = performance.now();
    },
    quiet,
  );
  await held;
  const startedWaiting = performance.now();
  const busy = await withMigrationLock(url, 902n, () => 'ran', { ...quiet, wait: false }).catch((e: unknown) => e);
  expect(busy).toBeInstanceOf(MigrationLockBusyError);
  const secondStartedAt = performance.now();
  await withMigrationLock(url, 902n, () => undefined, quiet);
  const waitedMs = performance.now() - startedWaiting;
  await first;

  const waits = spansOf('wait', 902n);
  expect(waits.map((s) => s.attributes['pg_migration_lock.outcome']).sort()).toEqual(['acquired', 'acquired', 'busy']);
  const [, second] = waits.filter((s) => s.attributes['pg_migration_lock.outcome'] === 'acquired');
  const ms = (s: ReadableSpan) => s.duration[0] * 1000 + s.duration[1] / 1e6;
  // From the second call's start (its span opens within a millisecond of it) until the first's fn ended, at least:
  // not a fixed 200 ms, which a slow no-wait call before it could eat into on a loaded machine.
  expect(fnEndedAt).toBeGreaterThan(secondStartedAt);
  expect(ms(second!)).toBeGreaterThanOrEqual(fnEndedAt - secondStartedAt - 1);
  expect(ms(second!)).toBeLessThanOrEqual(waitedMs + 50);
  const outcomes = await points('pg_migration_lock.wait.duration', { 'pg_migration_lock.key': '902' });
  expect(outcomes.map((p) => [p.attributes['pg_migration_lock.outcome'], histogram(p).count]).sort()).toEqual([
    ['acquired', 2],
    ['busy', 1],
  ]);
});

test('a lost lock: the hold span fails with the loss, and the locks-lost counter counts it', async () => {
  const error = await withMigrationLock(
    url,
    903n,
    async ({ client, signal }) => {
      const { pid } = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0];
      await withClient(url, (other) => other.query('SELECT pg_terminate_backend($1)', [pid]));
      if (!signal.aborted) await new Promise((resolve) => signal.addEventListener('abort', resolve));
    },
    quiet,
  ).catch((err: unknown) => err);
  expect(error).toBeInstanceOf(MigrationLockLostError);
  const [hold] = spansOf('hold', 903n);
  expect(hold?.attributes['pg_migration_lock.outcome']).toBe('lost');
  expect(hold?.status).toMatchObject({ code: 2, message: (error as Error).message });
  const [lost] = await points('pg_migration_lock.lock.lost', { 'pg_migration_lock.key': '903' });
  expect(lost?.value).toBe(1);
  expect(lost?.attributes['db.namespace']).toBe(database(url));
});

test('an adapter run: a migrate span with the migrator and the applied count, inside the lock', async () => {
  const db = knexFactory({ client: 'pg', connection: knexUrl, log: { warn() {}, debug() {} } });
  try {
    const config = { directory: fixture('knex/migrations'), lock: { key: 904n, logger: null } };
    const [, applied] = await latest(db, config);
    expect(applied).toHaveLength(3);
    await expect(latest(db, config)).resolves.toEqual([1, []]);
  } finally {
    await db.destroy();
  }
  // The second run found nothing pending: no lock taken, so no migrate span.
  const migrates = spansOf('migrate', 904n);
  expect(migrates).toHaveLength(1);
  expect(migrates[0]!.attributes).toMatchObject({
    'pg_migration_lock.migrator': 'knex',
    'pg_migration_lock.applied': 3,
    'pg_migration_lock.outcome': 'ok',
    'db.system': 'postgresql',
    'db.namespace': database(knexUrl),
  });
  const [hold] = spansOf('hold', 904n);
  const [wait] = spansOf('wait', 904n).filter((s) => s.attributes['pg_migration_lock.outcome'] === 'acquired');
  // The migration ran while the lock was held: its span is the hold span's child. Both name the migrator.
  expect(migrates[0]!.parentSpanContext?.spanId).toBe(hold!.spanContext().spanId);
  expect(hold!.attributes['pg_migration_lock.migrator']).toBe('knex');
  expect(wait!.attributes['pg_migration_lock.migrator']).toBe('knex');
  // The second run's wait: skipped, nothing pending.
  expect(spansOf('wait', 904n).map((s) => s.attributes['pg_migration_lock.outcome'])).toEqual(['acquired', 'skipped']);
  const [count] = await points('pg_migration_lock.migrations.applied', { 'pg_migration_lock.key': '904' });
  expect(count).toMatchObject({ value: 3, attributes: { 'pg_migration_lock.migrator': 'knex' } });
});

test('a fleet of two schemas: a target span each with its status, and targets counted by status', async () => {
  await prepareTenants(fleetUrl);
  const knexFleet = () =>
    fleet({ migrations: { directory: fixture('fleet/knex') }, log: { warn() {}, error() {}, debug() {} } });
  const first = await migrateEach(schemaTargets(fleetUrl, ['otel_a', 'otel_b']), knexFleet(), quiet);
  expect(first.counts).toMatchObject({ applied: 2, failed: 0 });
  const again = await migrateEach(schemaTargets(fleetUrl, ['otel_a']), knexFleet(), quiet);
  expect(again.counts).toMatchObject({ upToDate: 1 });

  const targets = first.results.map((r) => spansOf('fleet.target', r.key));
  expect(targets.map((list) => list.map((s) => s.attributes['pg_migration_lock.fleet.status']))).toEqual([
    ['applied', 'up-to-date'],
    ['applied'],
  ]);
  expect(targets[1]![0]!.attributes).toMatchObject({
    'pg_migration_lock.migrator': 'knex',
    'pg_migration_lock.fleet.target': expect.stringMatching(/\/otel_b$/),
    'pg_migration_lock.applied': first.results[1]!.status === 'applied' ? first.results[1]!.applied.length : -1,
  });
  // A target's lock and migration nest under its span.
  const [hold] = spansOf('hold', first.results[1]!.key);
  expect(hold!.parentSpanContext?.spanId).toBe(targets[1]![0]!.spanContext().spanId);
  const byStatus = await points('pg_migration_lock.fleet.targets', { 'pg_migration_lock.migrator': 'knex' });
  const sum = (status: string) =>
    byStatus
      .filter((p) => p.attributes['pg_migration_lock.fleet.status'] === status)
      .reduce((n, p) => n + (p.value as number), 0);
  expect([sum('applied'), sum('up-to-date')]).toEqual([2, 1]);
});

test('without @opentelemetry/api installed, the core loads (ESM and CommonJS) and locks', async () => {
  const { exited } = spawnNode(fixture('telemetry/absent.mjs'), [], {
    DATABASE_URL: url,
    NODE_OPTIONS: `--import=${fixture('telemetry/hide-otel.mjs')}`,
  });
  const { code, stdout, stderr } = await exited;
  expect(stderr).toBe('');
  expect(code).toBe(0);
  expect(stdout).toContain('RESULT {"hidden":true,"esm":"esm","cjs":"cjs"}');
});

test('the published builds (ESM and CommonJS) record through the app’s @opentelemetry/api', async () => {
  const { exited } = spawnNode(fixture('telemetry/present.mjs'), [], { DATABASE_URL: url });
  const { code, stdout, stderr } = await exited;
  expect(stderr).toBe('');
  expect(code).toBe(0);
  const line = stdout.split('\n').find((l) => l.startsWith('RESULT '));
  expect(JSON.parse(line!.slice(7))).toEqual([
    'pg_migration_lock.wait 73',
    'pg_migration_lock.hold 73',
    'pg_migration_lock.wait 74',
    'pg_migration_lock.hold 74',
  ]);
});
