package seckill_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/seckill"
)

func writerWorld(t *testing.T) *world {
	return newWorld(t, worldOpts{writer: true, grace: time.Hour, orderTTL: time.Hour, activities: []seckill.Activity{
		openActivity(3, "w", 10, 2),
	}})
}

func (w *world) publish(body []byte) {
	w.t.Helper()
	prod, err := nsq.NewProducer(w.nsqd.TCPAddr(), nsq.NewConfig())
	if err != nil {
		w.t.Fatal(err)
	}
	defer prod.Stop()
	if err := prod.Publish(w.topic, body); err != nil {
		w.t.Fatal(err)
	}
}

// TestWriterRedeliveryAndForeignRequestID: reservations that reach the
// writer without the buy path (a redelivered message, a request id another
// user already ordered: possible only after Redis lost its records) never
// make a second order or sell beyond the stock row.
func TestWriterRedeliveryAndForeignRequestID(t *testing.T) {
	w := writerWorld(t)
	now := time.Now().UnixMilli()
	batch := func(rs ...seckill.Reservation) []byte {
		b, _ := json.Marshal(rs)
		return b
	}
	w.publish(batch(seckill.Reservation{Activity: 3, RequestID: "a-1", User: "alice", Qty: 1, AcceptedMS: now}))
	stacktest.Eventually(t, 10*time.Second, func() error {
		if _, sold := w.stockRow(3); sold != 1 {
			return fmt.Errorf("sold %d, want 1", sold)
		}
		return nil
	})
	// Bob with alice's request id, in a batch without alice (her order is
	// found by the unique key, not by the read of the batch's users), then
	// alice's message again (redelivery).
	w.publish(batch(
		seckill.Reservation{Activity: 3, RequestID: "a-1", User: "bob", Qty: 1, AcceptedMS: now},
		seckill.Reservation{Activity: 3, RequestID: "b-1", User: "bob", Qty: 1, AcceptedMS: now},
	))
	w.publish(batch(seckill.Reservation{Activity: 3, RequestID: "a-1", User: "alice", Qty: 1, AcceptedMS: now}))
	stacktest.Eventually(t, 10*time.Second, func() error {
		if _, sold := w.stockRow(3); sold != 2 {
			return fmt.Errorf("sold %d, want 2 (b-1 only)", sold)
		}
		return nil
	})
	if n := w.queryInt("SELECT COUNT(*) FROM orders WHERE activity_id = 3 AND request_id = 'a-1'"); n != 1 {
		t.Errorf("%d orders for a-1, want 1", n)
	}
	if u := w.queryInt("SELECT COUNT(*) FROM orders WHERE activity_id = 3 AND request_id = 'a-1' AND user_id = 'alice'"); u != 1 {
		t.Errorf("a-1 is not alice's order")
	}
	// Over the stock row: 8 left, alice (limit 2, holds 1) and 9 others.
	var rs []seckill.Reservation
	rs = append(rs, seckill.Reservation{Activity: 3, RequestID: "a-2", User: "alice", Qty: 1, AcceptedMS: now})
	rs = append(rs, seckill.Reservation{Activity: 3, RequestID: "a-3", User: "alice", Qty: 1, AcceptedMS: now}) // over her quota
	for i := range 9 {
		rs = append(rs, seckill.Reservation{Activity: 3, RequestID: fmt.Sprintf("c-%d", i), User: fmt.Sprintf("c%d", i), Qty: 1, AcceptedMS: now})
	}
	w.publish(batch(rs...))
	stacktest.Eventually(t, 10*time.Second, func() error {
		if avail, sold := w.stockRow(3); avail != 0 || sold != 10 {
			return fmt.Errorf("available %d sold %d, want 0 and 10", avail, sold)
		}
		return nil
	})
	if n := w.queryInt("SELECT COUNT(*) FROM orders WHERE activity_id = 3 AND request_id = 'a-3'"); n != 0 {
		t.Errorf("a-3 ordered: alice is over her quota of 2")
	}
	if n := w.queryInt("SELECT SUM(qty) FROM orders WHERE activity_id = 3"); n != 10 {
		t.Errorf("%d units in orders, want 10", n)
	}
}

// TestWriterDeadLettersGarbage: a message that is not a batch of
// reservations goes to the dead-letter topic with the reason; the writer
// goes on with the next.
func TestWriterDeadLettersGarbage(t *testing.T) {
	w := writerWorld(t)
	got := stacktest.ConsumeJSON[map[string]any](t, w.nsqd.TCPAddr(), w.topic+".dead")
	w.publish([]byte("not json"))
	w.publish([]byte(`[{"a":3,"r":"","u":"x","q":1}]`))
	for _, want := range []string{"invalid character", "request id"} {
		select {
		case d := <-got:
			if !strings.Contains(fmt.Sprint(d["error"]), want) || d["body"] == nil {
				t.Errorf("dead letter %v, want an error with %q and the body", d, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no dead letter")
		}
	}
	w.publish([]byte(fmt.Sprintf(`[{"a":3,"r":"ok-1","u":"u","q":1,"t":%d}]`, time.Now().UnixMilli())))
	stacktest.Eventually(t, 10*time.Second, func() error {
		if _, sold := w.stockRow(3); sold != 1 {
			return fmt.Errorf("sold %d, want 1 after the garbage", sold)
		}
		return nil
	})
}
