-- The demo flash sale (scripts/stack.sh seed, after `flashsync
-- seckill-migrate`): 100 espresso machines (shop.item 1), one per user,
-- opening one minute after seeding for an hour. Re-seeding starts a fresh
-- sale: its orders are deleted here, and scripts/stack.sh deletes its
-- reservation counters in redis-16383 (the buy path reloads them from here).
SET time_zone = '+00:00';

DELETE FROM seckill.orders WHERE activity_id = 1;
REPLACE INTO seckill.activity (id, item_id, title, price, start_at, end_at, total_stock, per_user_limit)
  VALUES (1, 1, 'Espresso machine flash sale', 99.00,
          UTC_TIMESTAMP(3) + INTERVAL 1 MINUTE, UTC_TIMESTAMP(3) + INTERVAL 61 MINUTE, 100, 1);
REPLACE INTO seckill.activity_stock (activity_id, available, sold) VALUES (1, 100, 0);
