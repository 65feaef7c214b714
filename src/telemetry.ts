// OpenTelemetry, when the app has `@opentelemetry/api` (an optional peer): spans and metrics of the lock's life.
// Loaded once, at first use, synchronously; without the package every call here is a no-op that costs a check.
// The global tracer and meter providers are read through the API, so an app registering its SDK (before or after
// importing this package) gets them; a copy of the API loaded twice (ESM and CommonJS) shares them too.
import { createRequire } from 'node:module';
import { MigrationLockBusyError, MigrationLockTimeoutError } from './errors.js';

type Attributes = Record<string, string | number | boolean | undefined>;

/** The part of `@opentelemetry/api` used here. */
interface OtelApi {
  trace: {
    getTracer(name: string): { startSpan(name: string, options?: { attributes?: Attributes }): OtelSpan };
    setSpan(context: unknown, span: OtelSpan): unknown;
  };
  context: { active(): unknown; with<R>(context: unknown, fn: () => R): R };
  metrics: { getMeterProvider(): { getMeter(name: string): OtelMeter } };
  /** The meter a provider gives when none is registered. */
  createNoopMeter?(): OtelMeter;
  SpanStatusCode: { OK: number; ERROR: number };
}
interface OtelSpan {
  isRecording(): boolean;
  setAttributes(attributes: Attributes): unknown;
  setStatus(status: { code: number; message?: string }): unknown;
  recordException(exception: Error | string): unknown;
  end(): void;
}
interface Recorder {
  record(value: number, attributes?: Attributes): void;
}
interface Counter {
  add(value: number, attributes?: Attributes): void;
}
interface OtelMeter {
  createHistogram(name: string, options?: { unit?: string; description?: string }): Recorder;
  createCounter(name: string, options?: { unit?: string; description?: string }): Counter;
}

const NAME = 'pg-migration-lock';
/** The key as a string attribute (a bigint does not fit a span attribute, nor a double). */
export const KEY_ATTRIBUTE = 'pg_migration_lock.key';

let api: OtelApi | null | undefined;

/** `@opentelemetry/api`, loaded once; null when it is not installed (or fails to load). */
function otel(): OtelApi | null {
  if (api === undefined) {
    try {
      api = createRequire(import.meta.url)('@opentelemetry/api') as OtelApi;
    } catch {
      api = null;
    }
  }
  return api;
}

/** A span of ours, or nothing when OpenTelemetry is absent. */
export interface LockSpan {
  set(attributes: Attributes): void;
  /** Ends the span: an error marks it failed (and is recorded). */
  end(error?: unknown): void;
  /** Runs `fn` with this span active: spans started inside (the migrator's, the app's) are its children. */
  within<R>(fn: () => R): R;
}

const NO_SPAN: LockSpan = { set() {}, end() {}, within: (fn) => fn() };

/** Starts `pg_migration_lock.<name>` with `attributes` (undefined ones left out). */
export function startSpan(name: string, attributes: Attributes): LockSpan {
  const o = otel();
  if (!o) return NO_SPAN;
  const span = o.trace.getTracer(NAME).startSpan(`pg_migration_lock.${name}`, { attributes: defined(attributes) });
  // No SDK, or sampled out: nothing to set, but spans started within still take it as their parent.
  if (!span.isRecording()) return { ...NO_SPAN, end: () => span.end(), within: withSpan(o, span) };
  return {
    set: (more) => span.setAttributes(defined(more)),
    end: (error) => {
      if (error !== undefined) {
        span.recordException(error instanceof Error ? error : String(error));
        span.setStatus({
          code: o.SpanStatusCode.ERROR,
          message: error instanceof Error ? error.message : String(error),
        });
      }
      span.end();
    },
    within: withSpan(o, span),
  };
}

const withSpan =
  (o: OtelApi, span: OtelSpan) =>
  <R>(fn: () => R): R =>
    o.context.with(o.trace.setSpan(o.context.active(), span), fn);

/**
 * Where an adapter names its migrator for the lock's spans and metrics: a symbol-keyed lock option, so no
 * option name is taken and nothing is printed or checked for it.
 */
export const MIGRATOR = Symbol.for('pg-migration-lock.migrator');

/** The migrator an adapter named in `options` (see {@link MIGRATOR}). */
export const migratorOf = (options: object): string | undefined => (options as { [MIGRATOR]?: string })[MIGRATOR];

interface Instruments {
  wait: Recorder;
  hold: Recorder;
  applied: Counter;
  targets: Counter;
  lost: Counter;
}

let instruments: { provider: object; made: Instruments | undefined } | undefined;

/** Each instrument: a histogram (a duration) or a counter, its name, unit and description. */
const SPECS: Record<
  keyof Instruments,
  [kind: 'histogram' | 'counter', name: string, unit: string, description: string]
> = {
  wait: [
    'histogram',
    'pg_migration_lock.wait.duration',
    's',
    'Time spent waiting for the migration lock, until it was taken or given up',
  ],
  hold: ['histogram', 'pg_migration_lock.hold.duration', 's', 'Time the migration lock was held'],
  applied: ['counter', 'pg_migration_lock.migrations.applied', '{migration}', 'Migrations applied under the lock'],
  targets: ['counter', 'pg_migration_lock.fleet.targets', '{target}', 'Fleet targets finished, by status'],
  lost: ['counter', 'pg_migration_lock.lock.lost', '{lock}', 'Migration locks lost while held'],
};

function makeInstruments(m: OtelMeter): Instruments {
  const made = Object.entries(SPECS).map(([metric, [kind, name, unit, description]]) => [
    metric,
    kind === 'histogram'
      ? m.createHistogram(name, { unit, description })
      : m.createCounter(name, { unit, description }),
  ]);
  return Object.fromEntries(made) as Instruments;
}

/** Our instruments on the global meter provider, made again when another provider is registered. */
function meter(): Instruments | undefined {
  const o = otel();
  if (!o) return undefined;
  const provider = o.metrics.getMeterProvider();
  if (instruments?.provider !== provider) {
    const m = provider.getMeter(NAME);
    // No provider registered: recording into the no-op meter would only cost each call its attributes.
    instruments = { provider, made: m === o.createNoopMeter?.() ? undefined : makeInstruments(m) };
  }
  return instruments.made;
}

/** Records a metric: a duration in milliseconds (recorded in seconds) or a count. */
export function record(metric: 'wait' | 'hold', ms: number, attributes: Attributes): void;
export function record(metric: 'applied' | 'targets' | 'lost', count: number, attributes: Attributes): void;
export function record(metric: keyof Instruments, value: number, attributes: Attributes): void {
  const made = meter();
  if (!made) return;
  if (metric === 'wait' || metric === 'hold') made[metric].record(value / 1000, defined(attributes));
  else made[metric].add(value, defined(attributes));
}

/** Whether OpenTelemetry is there at all: callers skip work only spans would use. */
export const telemetryOn = (): boolean => otel() !== null;

/**
 * The database attributes of a session's client, by OpenTelemetry's semantic conventions: `db.system` and
 * `db.namespace` (the database), `server.address` and `server.port` where the client tells them. Never the user
 * nor the password.
 */
export function databaseAttributes(client: unknown): Attributes {
  if (!telemetryOn()) return {};
  const attributes: Attributes = { 'db.system': 'postgresql', 'db.system.name': 'postgresql' };
  // A pg client: its connection's own fields. A postgres.js sql: its options (hosts and ports as lists).
  const c = client as { database?: unknown; host?: unknown; port?: unknown; options?: Record<string, unknown> };
  const source = typeof c?.database === 'string' ? c : (c?.options ?? {});
  const first = (value: unknown) => (Array.isArray(value) ? value[0] : value);
  const database = first(source.database);
  const host = first(source.host);
  const port = Number(first(source.port));
  if (typeof database === 'string') attributes['db.namespace'] = database;
  if (typeof host === 'string' && !host.startsWith('/')) attributes['server.address'] = host;
  if (Number.isInteger(port) && port > 0) attributes['server.port'] = port;
  return attributes;
}

function defined(attributes: Attributes): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const [name, value] of Object.entries(attributes)) if (value !== undefined) out[name] = value;
  return out;
}

/** How a wait ended that did not take the lock: `busy` (no wait), `timeout`, `aborted`, or `error`. */
export function waitOutcome(error: unknown, signal?: AbortSignal): 'busy' | 'timeout' | 'aborted' | 'error' {
  if (error instanceof MigrationLockBusyError) return 'busy';
  if (error instanceof MigrationLockTimeoutError) return 'timeout';
  if (signal?.aborted && error === signal.reason) return 'aborted';
  return 'error';
}

/** A span with its metrics, ended once with how it went. */
interface Trace<O extends string> {
  within<R>(fn: () => R): R;
  end(outcome: O, more?: Attributes, error?: unknown): void;
}
const NO_TRACE: Trace<string> = { within: (fn) => fn(), end() {} };

/**
 * A call's wait: the `wait` span (active while the lock is taken) and the wait duration, from now until `end`
 * with `acquired` (give the pid and the database), `skipped`, or a failure's outcome ({@link waitOutcome}).
 */
export function traceWait(key: bigint, migrator: string | undefined): Trace<string> {
  if (!telemetryOn()) return NO_TRACE;
  const base = { [KEY_ATTRIBUTE]: String(key), 'pg_migration_lock.migrator': migrator };
  const span = startSpan('wait', base);
  const started = performance.now();
  return {
    within: span.within,
    end: (outcome, more = {}, error) => {
      span.set({ ...more, 'pg_migration_lock.outcome': outcome });
      span.end(error);
      record('wait', performance.now() - started, { ...base, 'pg_migration_lock.outcome': outcome });
    },
  };
}

/**
 * A holding: the `hold` span (active while fn runs), the hold duration since `since` (performance.now() when the
 * lock was taken), and a loss counted.
 */
export function traceHold(
  key: bigint,
  migrator: string | undefined,
  holder: { pid: number; client: unknown; since: number },
): Trace<'released' | 'failed' | 'lost'> {
  if (!telemetryOn()) return NO_TRACE;
  const base = { [KEY_ATTRIBUTE]: String(key), 'pg_migration_lock.migrator': migrator };
  const attributes = { ...base, 'pg_migration_lock.pid': holder.pid, ...databaseAttributes(holder.client) };
  const span = startSpan('hold', attributes);
  return {
    within: span.within,
    end: (outcome, more = {}, error) => {
      span.set({ ...more, 'pg_migration_lock.outcome': outcome });
      span.end(error);
      record('hold', performance.now() - holder.since, { ...base, 'pg_migration_lock.outcome': outcome });
      if (outcome === 'lost') record('lost', 1, attributes);
    },
  };
}
