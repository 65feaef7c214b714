#!/usr/bin/env node
import { main } from './program.js';

// A closed pipe (whoever read our output is gone) must not crash the CLI before it has stopped CMD and
// released the lock: such writes are dropped.
for (const stream of [process.stdout, process.stderr]) stream.on('error', () => {});

void main(process.argv.slice(2));
