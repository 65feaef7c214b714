// Adapter for drizzle: see issue 3.
export {};
