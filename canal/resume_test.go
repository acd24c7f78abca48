package canal

import (
	"context"
	"testing"

	"github.com/flashsync/flashsync/internal/stacktest"
)

// resumeByPosition takes file:pos only for a position this server wrote
// whose file it still has, at least pos long.
func TestResumeByPosition(t *testing.T) {
	conn := stacktest.MySQL(t)
	c := &Canal{opts: Options{MySQL: Source{Addr: stacktest.MySQLAddr(), User: "root", Flavor: "mariadb"}}}
	cur, err := currentPosition(conn, "mariadb")
	if err != nil {
		t.Fatal(err)
	}
	id, _ := c.resumeByPosition(context.Background(), Position{})
	if id == 0 {
		t.Fatal("no server_id read")
	}
	for _, tt := range []struct {
		name string
		pos  Position
		want bool
	}{
		{"written here", Position{File: cur.File, Pos: cur.Pos, GTID: cur.GTID, ServerID: id}, true},
		{"another server", Position{File: cur.File, Pos: cur.Pos, GTID: cur.GTID, ServerID: id + 1}, false},
		{"saved before server ids", Position{File: cur.File, Pos: cur.Pos, GTID: cur.GTID}, false},
		{"file gone", Position{File: "mysql-bin.999999", Pos: 4, GTID: cur.GTID, ServerID: id}, false},
		{"beyond the file's end", Position{File: cur.File, Pos: 1<<32 - 1, GTID: cur.GTID, ServerID: id}, false},
		{"no gtid", Position{File: cur.File, Pos: cur.Pos, ServerID: id}, false},
	} {
		if _, got := c.resumeByPosition(context.Background(), tt.pos); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
	c.opts.MySQL.Flavor = "mysql"
	if _, got := c.resumeByPosition(context.Background(), Position{File: cur.File, Pos: cur.Pos, GTID: cur.GTID, ServerID: id}); got {
		t.Error("mysql flavor resumed by position")
	}
}
