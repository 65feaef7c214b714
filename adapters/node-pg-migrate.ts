// Adapter for node-pg-migrate: see issue 3.
export {};
