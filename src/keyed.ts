// The one shape of "lock options plus a key": what adapters take as `lock`, what the CLI hands its migrators,
// and (with the key settled) what a fleet hands its migrator for one target.
import type { LockKeyInput } from './key.js';
import type { MigrationLockOptions } from './lock/options.js';

/**
 * Every option of `withMigrationLock`, plus the advisory-lock key (per database). Replicas migrating the same
 * tables must share the key; apps with migration tables of their own in one database may share it too (they
 * take turns), or each use their own (e.g. `lockKey('billing')`) to migrate side by side. Where it is
 * optional, the default depends on who takes the lock (see each adapter).
 * @example { key: lockKey('billing'), timeoutMs: 5 * 60_000, logger: pino() }
 */
export interface KeyedLockOptions extends MigrationLockOptions {
  key?: LockKeyInput;
}
