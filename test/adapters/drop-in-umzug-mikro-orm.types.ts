// Compile-time checks only (`npm run typecheck`): calls written for umzug and MikroORM type-check unchanged against
// their adapters (plus the lock source umzug needs), and resolve to what the migrator's own call resolves to.
import type { MikroORM } from '@mikro-orm/postgresql';
import type pg from 'pg';
import type { Sequelize } from 'sequelize';
import type { Umzug } from 'umzug';
import { expectTypeOf } from 'vitest';
import { pending as mikroOrmPending, up as mikroOrmUp } from '../../adapters/mikro-orm.js';
import { pending, up } from '../../adapters/umzug.js';

export function dropInUmzug(umzug: Umzug<object>, sequelize: Sequelize, pool: pg.Pool, url: string) {
  expectTypeOf(up(umzug, sequelize)).toEqualTypeOf<ReturnType<Umzug<object>['up']>>();
  expectTypeOf(up(umzug, pool, { to: '002-x.js' })).toEqualTypeOf<ReturnType<Umzug<object>['up']>>();
  up(umzug, url, { step: 1, lock: { key: 1n, timeoutMs: 60_000 } });
  up(umzug, url, { migrations: ['001-x.js'], rerun: 'SKIP' });
  expectTypeOf(pending(umzug)).toEqualTypeOf<Promise<string[]>>();
  // @ts-expect-error umzug's options are exclusive: `to` or `step`, not both
  up(umzug, url, { to: '002-x.js', step: 1 });
  // @ts-expect-error timeoutMs is a number of milliseconds
  up(umzug, url, { lock: { timeoutMs: '5m' } });
}

export function dropInMikroOrm(orm: MikroORM) {
  expectTypeOf(mikroOrmUp(orm)).toEqualTypeOf<ReturnType<MikroORM['migrator']['up']>>();
  expectTypeOf(mikroOrmUp(orm, { to: 'Migration20240101000002' })).toEqualTypeOf<
    ReturnType<MikroORM['migrator']['up']>
  >();
  mikroOrmUp(orm, 'Migration20240101000002');
  mikroOrmUp(orm, ['Migration20240101000002']);
  mikroOrmUp(orm, { migrations: ['Migration20240101000002'], lock: { key: 1n, wait: false } });
  expectTypeOf(mikroOrmPending(orm)).toEqualTypeOf<Promise<string[]>>();
  // @ts-expect-error timeoutMs is a number of milliseconds
  mikroOrmUp(orm, { lock: { timeoutMs: '5m' } });
}
