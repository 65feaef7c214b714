// A staged rollout: the first targets migrate alone (the canary), and a failure budget stops a run going wrong.

/** Why a run started no further target. */
export type FleetStopReason = 'canary' | 'max-failures' | 'stop-on-error' | 'signal';

/** `maxFailures` as given: a number of targets, or a share of the fleet (`'5%'`). */
export type MaxFailures = number | `${number}%`;

/** How the canary went: `size` targets to apply alone, how many did, and whether none of them failed. */
export interface CanaryOutcome {
  size: number;
  /** Canary targets that applied migrations (fewer than `size` when fewer targets had anything to apply). */
  applied: number;
  /** No canary target failed (the rest were let through once `size` had applied, or there were no more). */
  passed: boolean;
}

/**
 * The canary: until `size` targets have applied migrations, at most `size` targets are being migrated, and no
 * other starts while they run. A target found up to date, skipped or deferred gives its place back (it tested
 * nothing); one that applied keeps it; one that failed stops the run. Up-to-date targets found by a batched
 * check never take a place. With `size` 0 there is no canary.
 */
export class Canary {
  #free: number;
  #applied = 0;
  #failed = false;
  #waiters: (() => void)[] = [];

  constructor(readonly size: number) {
    this.#free = size;
  }

  /** Whether the canary is over (passed): every target may start. */
  get open(): boolean {
    return this.#applied >= this.size;
  }

  /**
   * Waits for a place in the canary while it lasts; resolves to whether the target took one (false: the canary
   * is over). Resolves too (false) once `stopped()`: the caller checks.
   */
  async enter(stopped: () => boolean): Promise<boolean> {
    for (;;) {
      if (this.open || stopped() || this.#failed) return false;
      if (this.#free > 0) {
        this.#free--;
        return true;
      }
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
  }

  /** A canary target ended: applied keeps its place, failed ends the canary (the caller stops), else it is given back. */
  leave(status: 'applied' | 'failed' | 'other'): void {
    if (status === 'applied') this.#applied++;
    else if (status === 'failed') this.#failed = true;
    else this.#free++;
    this.wake();
  }

  wake(): void {
    for (const resolve of this.#waiters.splice(0)) resolve();
  }

  outcome(): CanaryOutcome | undefined {
    if (this.size === 0) return undefined;
    return { size: this.size, applied: this.#applied, passed: !this.#failed };
  }
}

/** The number of failures a run tolerates: `maxFailures` against the fleet's size (targets read so far for an iterable). */
export function failureBudget(maxFailures: MaxFailures | undefined, fleetSize: number): number {
  if (maxFailures === undefined) return Number.POSITIVE_INFINITY;
  if (typeof maxFailures === 'number') return maxFailures;
  return Math.floor((Number.parseFloat(maxFailures) / 100) * fleetSize);
}

/** Checks `maxFailures`: a whole number >= 0, or a percentage string from 0% to 100%. */
export function checkMaxFailures(value: unknown): asserts value is MaxFailures | undefined {
  if (value === undefined) return;
  if (typeof value === 'number' && Number.isInteger(value) && value >= 0) return;
  if (typeof value === 'string' && /^\d+(\.\d+)?%$/.test(value) && Number.parseFloat(value) <= 100) return;
  throw new TypeError(
    `Expected \`maxFailures\` to be a whole number >= 0 or a percentage of the fleet ('5%'), got ${typeof value === 'string' ? JSON.stringify(value) : String(value)}`,
  );
}

/** Checks `canary`: a whole number >= 0 (0: none). */
export function checkCanary(value: unknown): asserts value is number | undefined {
  if (value === undefined || (typeof value === 'number' && Number.isInteger(value) && value >= 0)) return;
  throw new TypeError(
    `Expected \`canary\` to be a whole number >= 0 (targets to migrate first, alone), got ${String(value)}`,
  );
}
