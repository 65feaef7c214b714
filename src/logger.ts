/** Where the library reports what it does. `console` and pino loggers both fit. */
export interface Logger {
  debug?(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

const PREFIX = '[pg-migration-lock]';

/** The default: `console`, each line prefixed with `[pg-migration-lock]`; debug is dropped. */
export const defaultLogger: Logger = {
  info: (message) => console.info(`${PREFIX} ${message}`),
  warn: (message) => console.warn(`${PREFIX} ${message}`),
  error: (message) => console.error(`${PREFIX} ${message}`),
};

const silent: Logger = { info() {}, warn() {}, error() {} };

/** `undefined` → the default logger, `null` → silence; anything else must look like a logger. */
export function resolveLogger(logger: Logger | null | undefined): Logger {
  if (logger === undefined) return defaultLogger;
  if (logger === null) return silent;
  for (const level of ['info', 'warn', 'error'] as const) {
    if (typeof logger?.[level] !== 'function') {
      throw new TypeError(
        `Expected \`logger\` to have info, warn and error methods (console or pino fit), or null to silence; ${level} is ${typeof logger?.[level]}`,
      );
    }
  }
  return logger;
}

/** Runs a user callback so that whatever it throws (or rejects with) is logged and never fails the run. */
export function callSafely<A extends unknown[]>(
  logger: Logger,
  name: string,
  callback: ((...args: A) => unknown) | undefined,
  ...args: A
): void {
  if (!callback) return;
  const report = (err: unknown) => logger.warn(`${name} hook failed: ${errorMessage(err)}`);
  try {
    const result = callback(...args);
    if (result instanceof Promise) result.catch(report);
  } catch (err) {
    report(err);
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
