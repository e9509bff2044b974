-- Ferry's built-in point-of-sale schema: what `ferry serve` syncs when no --schema is given.
CREATE TABLE categories (
  id         TEXT PRIMARY KEY NOT NULL,
  name       TEXT NOT NULL,
  parent_id  TEXT REFERENCES categories (id),
  sort_order INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE products (
  id          TEXT PRIMARY KEY NOT NULL,
  category_id TEXT REFERENCES categories (id),
  sku         TEXT,
  name        TEXT NOT NULL,
  price_cents INTEGER NOT NULL DEFAULT 0,
  active      INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE customers (
  id             TEXT PRIMARY KEY NOT NULL,
  name           TEXT NOT NULL,
  email          TEXT,
  phone          TEXT,
  loyalty_points INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE sales (
  id          TEXT PRIMARY KEY NOT NULL,
  customer_id TEXT REFERENCES customers (id),
  total_cents INTEGER NOT NULL DEFAULT 0,
  status      TEXT NOT NULL DEFAULT 'open',
  created_at  TEXT NOT NULL
);

CREATE TABLE sale_items (
  id               TEXT PRIMARY KEY NOT NULL,
  sale_id          TEXT NOT NULL REFERENCES sales (id),
  product_id       TEXT NOT NULL REFERENCES products (id),
  quantity         INTEGER NOT NULL DEFAULT 1,
  unit_price_cents INTEGER NOT NULL
);
