package stacktest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"

	// database/sql driver "mysql" for SQLDB.
	_ "github.com/go-sql-driver/mysql"
)

// MySQL returns a connection as root to the shared MariaDB ([Require]
// semantics). It is closed at cleanup.
func MySQL(t testing.TB) *client.Conn {
	t.Helper()
	addr := MySQLAddr()
	conn, err := connect(addr, 5*time.Second)
	Require(t, "shared MariaDB at "+addr, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}

// NewDatabase creates a database with a fresh name (fs_test_<random hex>) on
// the shared MariaDB ([Require] semantics), drops it at cleanup and returns
// its name.
func NewDatabase(t testing.TB) string {
	t.Helper()
	conn := MySQL(t)
	b := make([]byte, 8)
	rand.Read(b)
	name := "fs_test_" + hex.EncodeToString(b)
	Exec(t, conn, "CREATE DATABASE "+name)
	t.Cleanup(func() {
		// A new connection, in case the test broke or reconfigured its own.
		conn, err := connect(MySQLAddr(), 5*time.Second)
		if err == nil {
			defer conn.Close()
			_, err = conn.Execute("DROP DATABASE IF EXISTS " + name)
		}
		if err != nil {
			t.Errorf("drop test database %s: %v", name, err)
		}
	})
	return name
}

// Exec runs query with args on conn and fails the test on error.
func Exec(t testing.TB, conn *client.Conn, query string, args ...any) *mysql.Result {
	t.Helper()
	r, err := conn.Execute(query, args...)
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return r
}

// connect logs in as root without password to the MariaDB at addr. Connecting
// and the handshake together are bounded by timeout.
func connect(addr string, timeout time.Duration) (*client.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var raw net.Conn
	dial := func(ctx context.Context, network, address string) (net.Conn, error) {
		c, err := new(net.Dialer).DialContext(ctx, network, address)
		if err != nil {
			return nil, err
		}
		if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
			c.Close()
			return nil, err
		}
		raw = c
		return c, nil
	}
	conn, err := client.ConnectWithDialer(ctx, "tcp", addr, "root", "", "", dial)
	if err != nil {
		return nil, err
	}
	if err := raw.SetDeadline(time.Time{}); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// SQLDB opens a database/sql pool on database of the shared MariaDB (UTC
// times, the session in UTC too), closed at cleanup.
func SQLDB(t testing.TB, database string) *sql.DB {
	t.Helper()
	db, err := sql.Open("mysql", DSN(MySQLAddr(), database))
	Require(t, "shared MariaDB at "+MySQLAddr(), err)
	Require(t, "shared MariaDB at "+MySQLAddr(), db.Ping())
	t.Cleanup(func() { db.Close() })
	return db
}

// DSN is the go-sql-driver/mysql DSN of root on addr, database: UTC on
// both sides, parameters interpolated client-side (one round trip per
// statement).
func DSN(addr, database string) string {
	return "root@tcp(" + addr + ")/" + database + "?parseTime=true&loc=UTC&time_zone=%27%2B00%3A00%27&interpolateParams=true"
}
