export {
  MigrationLockBusyError,
  MigrationLockError,
  MigrationLockLostError,
  MigrationLockTimeoutError,
} from './errors.js';
export { DEFAULT_LOCK_KEY, type LockKeyInput, lockKey } from './key.js';
export {
  type AcquiredInfo,
  type LockContext,
  type LockHooks,
  type MigrationLockOptions,
  type ReleasedInfo,
  type WaitingInfo,
  withMigrationLock,
} from './lock.js';
export type { Logger } from './logger.js';
export type { ClientSource } from './session.js';
export { getLockStatus, type Holder, type LockStatus, type ReleaseLockOptions, releaseLock } from './status.js';
