-- Flash-sale tables, kept in their own database apart from the ordinary item
-- tables (hot data isolation: the storm of stock updates and order inserts
-- never shares pages, locks or buffer-pool churn with the catalogue).
-- Statements are separated by lines holding only ";"-terminated statements
-- and are idempotent: Migrate runs them on every start.

CREATE TABLE IF NOT EXISTS activity (
  id             BIGINT        NOT NULL PRIMARY KEY,
  item_id        BIGINT        NOT NULL,
  title          VARCHAR(200)  NOT NULL DEFAULT '',
  price          DECIMAL(10,2) NOT NULL,
  start_at       DATETIME(3)   NOT NULL,
  end_at         DATETIME(3)   NOT NULL,
  total_stock    INT           NOT NULL,
  per_user_limit INT           NOT NULL DEFAULT 1,
  updated_at     DATETIME(3)   NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
  KEY (item_id)
) ENGINE=InnoDB;

-- available + sold = total_stock at every commit: the final guard against
-- overselling is "available = available - n ... WHERE available >= n".
CREATE TABLE IF NOT EXISTS activity_stock (
  activity_id BIGINT NOT NULL PRIMARY KEY,
  available   INT    NOT NULL,
  sold        INT    NOT NULL DEFAULT 0,
  updated_at  DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
  CHECK (available >= 0)
) ENGINE=InnoDB;

-- One row per sold reservation. (activity_id, request_id) is unique: a
-- retried request, or a queued reservation delivered twice, makes at most
-- one order.
CREATE TABLE IF NOT EXISTS orders (
  id           BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
  activity_id  BIGINT      NOT NULL,
  user_id      VARCHAR(64) NOT NULL,
  qty          INT         NOT NULL,
  status       ENUM('reserved','paid','expired') NOT NULL DEFAULT 'reserved',
  request_id   VARCHAR(64) NOT NULL,
  accepted_at  DATETIME(6) NOT NULL,
  created_at   DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  expires_at   DATETIME(6) NOT NULL,
  paid_at      DATETIME(6) NULL,
  UNIQUE KEY uniq_request (activity_id, request_id),
  KEY by_user (activity_id, user_id),
  KEY by_expiry (status, expires_at)
) ENGINE=InnoDB;
