-- Demo schema and data for the local stack (scripts/stack.sh seed).
-- Idempotent: safe to apply any number of times; re-applying resets the
-- demo rows (ids 1..10) to the values below.
SET NAMES utf8mb4;

CREATE DATABASE IF NOT EXISTS shop DEFAULT CHARACTER SET utf8mb4;

CREATE TABLE IF NOT EXISTS shop.item (
  id         BIGINT        NOT NULL PRIMARY KEY,
  name       VARCHAR(200)  NOT NULL,
  price      DECIMAL(10,2) NOT NULL,
  stock      INT           NOT NULL,
  view_count INT           NOT NULL DEFAULT 0,
  updated_at TIMESTAMP(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

INSERT INTO shop.item (id, name, price, stock, view_count) VALUES
  (1,  'Espresso machine',      249.00,  12, 0),
  (2,  'Burr coffee grinder',    89.90,  30, 0),
  (3,  'Milk frothing jug',      14.50, 120, 0),
  (4,  'Ceramic cup (set of 4)', 24.00,  64, 0),
  (5,  'Pour-over kettle',       39.99,  25, 0),
  (6,  'Paper filters (100)',     4.75, 500, 0),
  (7,  'Digital scale',          22.00,  40, 0),
  (8,  'Tamper 58mm',            19.90,  35, 0),
  (9,  'Knock box',              17.25,  18, 0),
  (10, 'Descaling tablets',       8.40, 200, 0)
ON DUPLICATE KEY UPDATE
  name       = VALUES(name),
  price      = VALUES(price),
  stock      = VALUES(stock),
  view_count = VALUES(view_count);
