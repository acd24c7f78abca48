# flashsync — developer entry points. The local stack (MariaDB, 4x Redis, nsqlookupd, 2x nsqd,
# the demo backend and 2x Varnish)
# is managed by scripts/stack.sh and lives under .stack/.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)

STACK := scripts/stack.sh

.PHONY: stack-up stack-down stack-status seed build run bench test fmt vet clean

stack-up:
	$(STACK) up

stack-down:
	$(STACK) down

stack-status:
	$(STACK) status

seed: stack-up
	$(STACK) seed

build:
	go mod download
	go build -o bin/flashsync ./cmd/flashsync

run: seed build
	@echo
	@echo "flashsync is starting (Ctrl-C stops it). In another terminal, watch a purge:"
	@echo "  # item 1 hashes to group hot-a (replicas 16379, 16380); both hold its two keys:"
	@echo '  for p in 16379 16380; do redis-cli -p $$p exists item:1 item:page:1; done'
	@echo '  mariadb -h127.0.0.1 -P13306 -uroot -e "UPDATE shop.item SET price=price+1 WHERE id=1"'
	@echo '  sleep 0.1; for p in 16379 16380; do redis-cli -p $$p exists item:1 item:page:1; done   # 0 and 0 (purged milliseconds after the commit)'
	@echo "  # Varnish (group varnish: 16081 and 16082 hold the same pages; X-Varnish with two ids = hit):"
	@echo '  for i in 1 2; do curl -s -o /dev/null -D - http://127.0.0.1:16081/item/1.html | grep -iE "^(x-varnish|x-generated-at|x-cache)"; done   # miss, then hit'
	@echo '  mariadb -h127.0.0.1 -P13306 -uroot -e "UPDATE shop.item SET price=price+1 WHERE id=1"'
	@echo '  sleep 0.1; curl -s -o /dev/null -D - http://127.0.0.1:16081/item/1.html | grep -iE "^(x-varnish|x-generated-at|x-cache)"   # miss: purged (also on 16082, and /list.html by tag item-1)'
	@echo "  # metrics and health: curl -s http://127.0.0.1:18080/metrics | grep ^flashsync_ ; curl -s http://127.0.0.1:18080/healthz"
	@echo "  # the consistency checker: curl -s http://127.0.0.1:18080/consistency"
	@echo "  # the flash sale (seeded to open one minute from now; 100 units, 1 per user):"
	@echo '  curl -s http://127.0.0.1:18090/activities/1   # status and opens_in_s'
	@echo '  BUY_URL=$$(curl -s "http://127.0.0.1:18090/activities/1/buy.js?user=alice" | sed -n "s/.*\"buy_url\":\"\([^\"]*\)\".*/\1/p")   # empty until the opening'
	@echo '  curl -s -XPOST "http://127.0.0.1:18090$$BUY_URL" -d "{\"request_id\":\"alice-1\"}"   # 202 reserved'
	@echo '  curl -s "http://127.0.0.1:18090/orders/alice-1?activity=1"   # ordered'
	@echo "  # purge by hand (docs/admin.md): what a purge of item 1 would reach, published nothing:"
	@echo '  curl -s -H "Authorization: Bearer dev-operator-token" -XPOST http://127.0.0.1:18100/api/v1/purges -d '"'"'{"reason":"demo","dry_run":true,"rows":[{"table":"shop.item","key":{"id":1}}]}'"'"
	@echo "  # or in a browser: http://127.0.0.1:18100/ (log in with dev-operator-token; dev-viewer-token may only preview)"
	@echo
	exec bin/flashsync all -config configs/dev.toml

bench: stack-up build
	go test -run '^$$' -bench . -benchtime 2s ./invalidate
	go test -run '^$$' -bench BenchmarkGet -benchtime 5s ./cacheaside
	go run ./bench/bulkupdate -big-rows 1000000
	go run ./bench/seckill
	go run ./bench/checker
	go run ./bench/hotkey

test: stack-up
	go vet ./...
	CI=$${CI:-} go test -race -count=1 -timeout 15m ./...

fmt:
	go fmt ./...

vet:
	go vet ./...

clean:
	rm -rf bin/
