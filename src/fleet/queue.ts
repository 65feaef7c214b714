// Which target a fleet run tries next: an array in order (going on from a random untried one after a busy one), or an iterable read one ahead.
import type { FleetTarget } from './target.js';
import type { FleetResult } from './types.js';

/** A target of the run: checked, keyed, and once it ends, its result. */
export interface Entry {
  target: FleetTarget;
  key: bigint;
  result?: FleetResult;
  /** Milliseconds spent in its tries so far. */
  spent: number;
}

/**
 * The targets a run has not tried yet. An array is taken in order; after a target another run holds (`jump`),
 * from a random untried one on: two runs started together on one list then work apart, instead of one trailing
 * the other and finding each of its targets busy (each such target costs a check now and one later). A run
 * alone never jumps: it goes in the given order. An iterable is read in order, one target ahead of the runs.
 */
export class TargetQueue {
  /** Every target read so far, in the order read. */
  readonly entries: Entry[];
  #tried: boolean[];
  #left: number;
  #cursor = 0;
  #reading: Promise<unknown> = Promise.resolve();
  /** The target read ahead of the one last handed out. */
  #ahead: Promise<Entry | undefined> | undefined;
  #exhausted: boolean;
  /** What the iterable threw (or a bad target it yielded). */
  error: { error: unknown } | undefined;

  constructor(
    entries: Entry[],
    readonly source: AsyncIterator<unknown> | undefined,
    readonly toEntry: (input: unknown, where: string) => Entry,
  ) {
    this.entries = entries;
    this.#tried = entries.map(() => false);
    this.#left = entries.length;
    this.#exhausted = source === undefined;
  }

  /** How many targets there are, once known. */
  get total(): number | undefined {
    return this.#exhausted ? this.entries.length : undefined;
  }

  /**
   * The next untried target, or undefined when there is none (or the iterable failed). An iterable is read one
   * target ahead, so its end (and the total) is known while its last target runs.
   */
  async next(stopped: () => boolean): Promise<Entry | undefined> {
    if (!this.source) return this.#take();
    const next = this.#reading.then(async () => {
      const entry = await (this.#ahead ?? this.#read(stopped));
      this.#ahead = entry && !stopped() ? this.#read(stopped) : undefined;
      return entry;
    });
    this.#reading = next;
    return next;
  }

  /** Reads one target of the iterable (never two at once: `next` chains them). */
  async #read(stopped: () => boolean): Promise<Entry | undefined> {
    if (stopped() || this.#exhausted || this.error) return undefined;
    try {
      const { done, value } = await this.source!.next();
      if (done) {
        this.#exhausted = true;
        return undefined;
      }
      const entry = this.toEntry(value, `targets (item ${this.entries.length})`);
      this.entries.push(entry);
      return entry;
    } catch (error) {
      this.error ??= { error };
      return undefined;
    }
  }

  /** The target just tried was busy: move on from a random untried one (arrays only). */
  jump(): void {
    if (!this.source && this.#left > 0) this.#cursor = Math.floor(Math.random() * this.#tried.length);
  }

  async close(): Promise<void> {
    await this.#ahead;
    await this.source?.return?.(undefined).catch(() => {});
  }

  #take(): Entry | undefined {
    if (this.#left === 0) return undefined;
    const n = this.#tried.length;
    let i = this.#cursor % n;
    while (this.#tried[i]) i = (i + 1) % n;
    this.#tried[i] = true;
    this.#left--;
    this.#cursor = i + 1;
    return this.entries[i];
  }
}
