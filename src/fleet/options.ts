// The up-front checks of `migrateEach`: its targets' form, its migrator and its options, each a TypeError before any connection.

import { parseKey } from '../key.js';
import { LOCK_OPTION_NAMES, resolveOptions } from '../lock/options.js';
import { type Logger, resolveLogger } from '../logger.js';
import { checkOptionNames } from '../option-names.js';
import { checkCanary, checkMaxFailures, type MaxFailures } from './rollout.js';
import type { FleetTargetInput } from './target.js';
import type { FleetMigrator, FleetTargetLockOptions, MigrateEachOptions } from './types.js';

export type FleetTargets = Iterable<FleetTargetInput> | AsyncIterable<FleetTargetInput>;

/** `migrateEach`'s options with their defaults, checked. */
export interface FleetSetup<M extends FleetMigrator> {
  concurrency: number;
  keyOf: MigrateEachOptions<M>['keyOf'];
  onProgress: MigrateEachOptions<M>['onProgress'];
  stopOnError: boolean;
  canary: number;
  maxFailures: MaxFailures | undefined;
  signal: AbortSignal | undefined;
  logger: Logger;
  lock: FleetTargetLockOptions;
}

const LOCK_OPTIONS = new Set(['timeoutMs', 'reportEveryMs', 'pollIntervalMs', 'applicationName', 'hooks']);
const OPTIONS = new Set([
  'concurrency',
  'keyOf',
  'onProgress',
  'stopOnError',
  'canary',
  'maxFailures',
  'signal',
  'logger',
  'lock',
]);

/** Checks `migrateEach`'s arguments; every problem is a TypeError (a bad `migrator.key` a RangeError). */
export function checkFleetArguments<M extends FleetMigrator>(
  targets: unknown,
  migrator: M,
  options: MigrateEachOptions<M>,
): FleetSetup<M> {
  if (typeof targets === 'string') {
    throw new TypeError('Expected `targets` to be a list of targets: wrap a single connection string in [ ]');
  }
  const iterable = (targets as Iterable<unknown> | null)?.[Symbol.iterator];
  const asyncIterable = (targets as AsyncIterable<unknown> | null)?.[Symbol.asyncIterator];
  if (typeof iterable !== 'function' && typeof asyncIterable !== 'function') {
    throw new TypeError(
      `Expected \`targets\` to be an array or an (async) iterable of targets, got ${targets === null ? 'null' : typeof targets}`,
    );
  }
  checkMigrator(migrator);
  if (options === null || typeof options !== 'object') {
    throw new TypeError(`Expected \`options\` to be an object, got ${options === null ? 'null' : typeof options}`);
  }
  checkOptionNames(options, [...OPTIONS], 'option of migrateEach');
  const {
    concurrency = 4,
    keyOf,
    onProgress,
    stopOnError = false,
    canary = 0,
    maxFailures,
    signal,
    lock = {},
  } = options;
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new TypeError(`Expected \`concurrency\` to be a whole number >= 1, got ${String(concurrency)}`);
  }
  for (const [name, value] of [
    ['keyOf', keyOf],
    ['onProgress', onProgress],
  ] as const) {
    if (value !== undefined && typeof value !== 'function') {
      throw new TypeError(`Expected \`${name}\` to be a function, got ${typeof value}`);
    }
  }
  if (typeof stopOnError !== 'boolean') {
    throw new TypeError(`Expected \`stopOnError\` to be a boolean, got ${typeof stopOnError}`);
  }
  checkCanary(canary);
  checkMaxFailures(maxFailures);
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new TypeError('Expected `signal` to be an AbortSignal');
  }
  if (lock === null || typeof lock !== 'object') throw new TypeError('Expected `lock` to be an object of lock options');
  const foreign = Object.keys(lock).filter((name) => !LOCK_OPTIONS.has(name));
  // A typo is named with the option meant; a lock option the fleet sets itself is explained.
  if (!foreign.some((name) => LOCK_OPTION_NAMES.includes(name) || name === 'key')) {
    checkOptionNames(lock, [...LOCK_OPTIONS], 'lock option of migrateEach');
  }
  if (foreign.length > 0) {
    throw new TypeError(
      `\`lock\` of migrateEach takes ${[...LOCK_OPTIONS].join(', ')}; ${foreign.map((n) => `\`${n}\``).join(', ')} ${foreign.length > 1 ? 'are' : 'is'} the fleet's own (keyOf, signal, logger) or not a lock option`,
    );
  }
  // The core's own checks of those options (durations, hooks).
  resolveOptions({ ...lock, logger: null });
  return {
    concurrency,
    keyOf,
    onProgress,
    stopOnError,
    canary,
    maxFailures,
    signal,
    logger: resolveLogger(options.logger),
    lock,
  };
}

function checkMigrator(migrator: FleetMigrator): void {
  if (migrator === null || typeof migrator !== 'object') {
    throw new TypeError(
      "Expected `migrator` to be a fleet migrator ({ name, pending, run }), e.g. fleet(config) from 'pg-migration-lock/knex'",
    );
  }
  if (typeof migrator.name !== 'string' || migrator.name === '') {
    throw new TypeError('Expected `migrator.name` to be a non-empty string');
  }
  for (const method of ['pending', 'run'] as const) {
    if (typeof migrator[method] !== 'function') {
      throw new TypeError(`Expected \`migrator.${method}\` to be a function, got ${typeof migrator[method]}`);
    }
  }
  if (migrator.key !== undefined) parseKey(migrator.key);
}
