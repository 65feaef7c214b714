export type { ClientSource } from './driver/index.js';
export {
  MigrationBlockedError,
  MigrationLockBusyError,
  MigrationLockError,
  MigrationLockLostError,
  MigrationLockTimeoutError,
} from './errors.js';
export { migrateEach } from './fleet/index.js';
export type { CanaryOutcome, FleetStopReason, MaxFailures } from './fleet/rollout.js';
export {
  type FleetTarget,
  type FleetTargetInput,
  type FleetTargetSpec,
  fleetKey,
  fleetTarget,
} from './fleet/target.js';
export type {
  FleetAppliedRule,
  FleetCounts,
  FleetLockOptions,
  FleetMigrator,
  FleetProgressEvent,
  FleetReport,
  FleetResult,
  FleetStatus,
  FleetTargetLockOptions,
  MigrateEachOptions,
} from './fleet/types.js';
export { DEFAULT_LOCK_KEY, KNOWN_KEYS, type KnownKey, type LockKeyInput, lockKey } from './key.js';
export { withMigrationLock } from './lock/lock.js';
export type {
  AcquiredInfo,
  LockContext,
  LockHooks,
  MigrationLockOptions,
  ReleasedInfo,
  WaitingInfo,
} from './lock/options.js';
export type { Logger } from './logger.js';
export type { Blocker } from './sql/blockers.js';
export type { AppliedRead } from './sql/fleet-check.js';
export {
  getLockStatus,
  type Holder,
  type LockStatus,
  type ReleaseLockOptions,
  type ReleaseResult,
  releaseLock,
} from './status.js';
