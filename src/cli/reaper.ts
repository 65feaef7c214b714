// The process between `run` and CMD. It starts CMD in its own process group (this process was started
// detached, so the group is this one's), and kills that whole group the moment the pipe to the CLI closes
// without a word: the CLI died, even by SIGKILL, and with it the lock. Without it, CMD would go on
// migrating beside the next holder. It reports CMD's exit (or why CMD could not start) on the pipe.
import { spawn } from 'node:child_process';
import { createReadStream, writeSync } from 'node:fs';
import { Socket } from 'node:net';

/** What the reaper says on the pipe, one JSON line: CMD's exit, or why it could not start. */
export type ReaperMessage = { code: number | null; signal: NodeJS.Signals | null } | { error: string; message: string };

const [file, ...args] = process.argv.slice(2);
// Under Bun a net.Socket on an inherited fd never delivers what is written to it: there the pipe is read
// (for its close) and written through fs instead.
const bun = process.versions.bun !== undefined;
const control = bun ? createReadStream('', { fd: 3 }) : new Socket({ fd: 3, readable: true, writable: true });
let settled = false;
const report = (message: ReaperMessage) => {
  settled = true;
  const line = `${JSON.stringify(message)}\n`;
  if (control instanceof Socket) control.end(line, () => process.exit(0));
  else {
    writeSync(3, line);
    process.exit(0);
  }
};

// Signals are the CLI's to give: it sends them to this group, where CMD gets them once. A Ctrl-C, a
// SIGTERM or a hang-up meant for the CLI must not end this process and leave CMD unwatched.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => {});

control.on('close', () => {
  if (!settled) process.kill(-process.pid, 'SIGKILL');
});
control.on('error', () => {});
control.resume();

const child = spawn(file!, args, { stdio: 'inherit' });
child.once('error', (err: NodeJS.ErrnoException) => report({ error: err.code ?? 'EUNKNOWN', message: err.message }));
child.once('exit', (code, signal) => report({ code, signal }));
