// Options objects refuse keys they do not know, naming the nearest known one: a typo such as `timeOutMs` would
// otherwise pass silently, and the call would run without the option it was meant to have.

/**
 * Refuses an options object with a key that is not among `known`, naming it and the nearest known one: a typo such
 * as `timeOutMs` would otherwise pass silently, and the call would run without the option it was meant to have.
 */
export function checkOptionNames(options: object, known: readonly string[], what = 'option'): void {
  for (const name of Object.keys(options)) {
    if (known.includes(name)) continue;
    const nearest = nearestOf(name, known);
    throw new TypeError(
      `Unknown ${what} ${name}${nearest ? `; did you mean ${nearest}?` : ''} (known: ${known.join(', ')})`,
    );
  }
}

/** The known name closest to `name` (case ignored; Levenshtein distance), when it is close enough to be a typo of it. */
function nearestOf(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Number.POSITIVE_INFINITY;
  for (const candidate of known) {
    const distance = editDistance(name.toLowerCase(), candidate.toLowerCase());
    if (distance < bestDistance) [best, bestDistance] = [candidate, distance];
  }
  return bestDistance <= Math.max(2, Math.floor(name.length / 3)) ? best : undefined;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length]!;
}
