// For migrators that return their errors instead of throwing them (kysely's `{ error, results }`): a lock timeout
// among them becomes a rejection, so the core tries the run again (lockRetries), and the last result comes back.
import { isLockTimeout } from '../../src/lock/retry.js';

/**
 * For a migrator that returns its errors (kysely's `{ error }`): a lock timeout among them rejects instead, so that
 * the core tries the run again (`lockRetries`); any other result is returned as it is.
 */
export function rejectingLockTimeout<R extends { error?: unknown }>(result: R): R | Promise<never> {
  return isLockTimeout(result.error) ? Promise.reject(new LockTimeoutResult(result)) : result;
}

/** A migrator's result that failed on a lock timeout, as a rejection (its `cause` the timeout), keeping the result. */
class LockTimeoutResult<R extends { error?: unknown }> extends Error {
  constructor(readonly result: R) {
    super('The migrator returned a lock timeout', { cause: result.error });
  }
}

/**
 * What a call of {@link rejectingLockTimeout}'s migrator resolves to after all: its last result (with the error
 * that ended the tries, when retries ran out), else `{ error }`.
 */
export function resultOfFailure<R extends { error?: unknown }>(error: unknown): R | { error: unknown } {
  const failed = error instanceof LockTimeoutResult ? error : (error as { cause?: unknown } | null)?.cause;
  if (!(failed instanceof LockTimeoutResult)) return { error };
  return failed === error ? (failed.result as R) : { ...(failed.result as R), error };
}
