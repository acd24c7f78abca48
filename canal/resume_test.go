package canal

import (
	"context"
	"slices"
	"testing"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

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

// The unsigned columns of a table map, cached per table map: the same
// table id with other column types (a DDL) computes them again.
func TestUnsignedCache(t *testing.T) {
	c := unsignedCache{}
	// BIGINT UNSIGNED, VARCHAR, INT (signed), TINYINT UNSIGNED: the bitmap
	// has one bit per numeric column, most significant first.
	tm := &replication.TableMapEvent{TableID: 7, ColumnCount: 4,
		ColumnType:       []byte{mysql.MYSQL_TYPE_LONGLONG, mysql.MYSQL_TYPE_VARCHAR, mysql.MYSQL_TYPE_LONG, mysql.MYSQL_TYPE_TINY},
		SignednessBitmap: []byte{0b10100000}}
	if got := c.columns(tm); !slices.Equal(got, []int{0, 3}) {
		t.Fatalf("unsigned columns %v, want [0 3]", got)
	}
	row := []any{int64(-1), "x", int32(-1), int8(-1)}
	fixUnsigned(row, c.columns(tm))
	if row[0] != uint64(1<<64-1) || row[2] != int32(-1) || row[3] != uint8(255) {
		t.Errorf("fixed row %v", row)
	}
	altered := &replication.TableMapEvent{TableID: 7, ColumnCount: 1, ColumnType: []byte{mysql.MYSQL_TYPE_LONG}, SignednessBitmap: []byte{0}}
	if got := c.columns(altered); len(got) != 0 {
		t.Errorf("after the DDL: %v, want none", got)
	}
}
