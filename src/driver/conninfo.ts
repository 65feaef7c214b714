// libpq's keyword/value connection strings (`host=db port=5432 dbname=app user=app`), which psql and every libpq tool
// take wherever they take a URL, so users put them in DATABASE_URL. pg and postgres.js read URLs only: such a string
// is turned into the equivalent URL once, where it comes in, and everything after sees a URL.
//
// Parsed by hand, to libpq's own grammar (conninfo_parse in fe-connect.c): no maintained JavaScript package parses
// it (pg-native reaches libpq's parser through a native addon, far too heavy a dependency for this).

/** Whether `text` is in libpq's keyword/value form rather than a URL or a socket path. */
export const isConninfo = (text: string): boolean => /^\s*[A-Za-z_]+\s*=/.test(text);

/**
 * The settings of a keyword/value string: `keyword = value` pairs separated by whitespace, spaces around `=`
 * optional; a value in single quotes may hold spaces, and `\'` and `\\` escape a quote or a backslash (also
 * outside quotes). A malformed string is a TypeError that never echoes the string (it may hold a password).
 */
export function parseConninfo(text: string): Map<string, string> {
  const settings = new Map<string, string>();
  let i = 0;
  const skipSpace = () => {
    while (i < text.length && /\s/.test(text[i]!)) i++;
  };
  for (skipSpace(); i < text.length; skipSpace()) {
    const keyword = /^[A-Za-z_][A-Za-z0-9_]*/.exec(text.slice(i))?.[0];
    if (!keyword) throw bad(`a keyword at character ${i + 1}`);
    i += keyword.length;
    skipSpace();
    if (text[i] !== '=') throw bad(`"=" after "${keyword}"`);
    i++;
    skipSpace();
    let value = '';
    if (text[i] === "'") {
      for (i++; ; i++) {
        if (i >= text.length) throw bad(`the closing quote of the value of "${keyword}"`);
        const c = text[i]!;
        if (c === "'") break;
        if (c === '\\' && i + 1 < text.length) i++;
        value += text[i];
      }
      i++;
    } else {
      for (; i < text.length && !/\s/.test(text[i]!); i++) {
        if (text[i] === '\\' && i + 1 < text.length) i++;
        value += text[i];
      }
    }
    settings.set(keyword, value);
  }
  if (settings.size === 0) throw bad('a keyword');
  return settings;
}

const bad = (expected: string) =>
  new TypeError(
    `The connection string is not a valid libpq keyword/value string (expected ${expected}; e.g. host=db port=5432 dbname=app user=app, a value with spaces in 'single quotes')`,
  );

/**
 * The URL equivalent to a keyword/value string: `host`, `port`, `dbname`, `user` and `password` in their places,
 * every other keyword (`sslmode`, `application_name`, `options`, …) as a query parameter, as pg reads them.
 */
export function conninfoToUrl(text: string): string {
  const settings = parseConninfo(text);
  const take = (name: string) => {
    const value = settings.get(name);
    settings.delete(name);
    return value || undefined;
  };
  const user = take('user');
  const password = take('password');
  const host = take('host') ?? take('hostaddr');
  const port = take('port');
  const database = take('dbname');
  const params = new URLSearchParams();
  // A socket directory (or several hosts) goes where pg reads it: the `host` parameter.
  const socket = host !== undefined && (host.startsWith('/') || host.includes(','));
  if (socket) params.set('host', host);
  for (const [name, value] of settings) params.set(name, value);
  const auth =
    user === undefined
      ? ''
      : `${encodeURIComponent(user)}${password === undefined ? '' : `:${encodeURIComponent(password)}`}@`;
  const hostPart = socket || host === undefined ? '' : host.includes(':') ? `[${host}]` : encodeURIComponent(host);
  const query = params.size > 0 ? `?${params}` : '';
  return `postgres://${auth}${hostPart}${port ? `:${port}` : ''}/${encodeURIComponent(database ?? '')}${query}`;
}

/** A connection string as a URL (or socket path) pg can read: keyword/value strings converted, anything else as it is. */
export const asUrl = (text: string): string => (isConninfo(text) ? conninfoToUrl(text) : text);
