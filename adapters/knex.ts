// Adapter for knex: see issue 3.
export {};
