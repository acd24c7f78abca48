// Package demoweb is the demo backend behind the local stack's Varnish
// instances: item pages rendered from a MySQL table, tagged with xkey
// headers, so that flashsync's HTTP purges can be watched
// (docs/http-caches.md).
//
//	GET /item/{id}.html  one item; xkey: item-{id}
//	GET /list.html       every item; xkey: item-1 item-2 ...
//	GET /healthz         200 "ok" without touching MySQL (never cached)
//
// Every page is cacheable for an hour (Cache-Control: max-age=3600) and
// carries X-Generated-At, the time the backend rendered it: a page served
// from cache keeps the time of its miss.
package demoweb

import (
	"context"
	"errors"
	"fmt"
	"html"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
)

// Options configure a Server.
type Options struct {
	// MySQLAddr, MySQLUser and MySQLPassword reach the server of Table.
	MySQLAddr, MySQLUser, MySQLPassword string
	// Table is "db.table" with columns id, name, price, stock (default
	// shop.item).
	Table  string
	Logger *slog.Logger
}

// Server serves the demo pages.
type Server struct {
	opts Options
	db   string
	tbl  string

	mu   sync.Mutex
	conn *client.Conn
}

// New checks the options; nothing connects before the first request.
func New(opts Options) (*Server, error) {
	if opts.Table == "" {
		opts.Table = "shop.item"
	}
	db, tbl, ok := strings.Cut(opts.Table, ".")
	if !ok || db == "" || tbl == "" || strings.ContainsAny(opts.Table, "` ") {
		return nil, fmt.Errorf("demo backend: table %q is not db.table", opts.Table)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Server{opts: opts, db: db, tbl: tbl}, nil
}

// ListenAndServe serves on addr until ctx ends.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	s.opts.Logger.Info("demo backend serving", "addr", "http://"+l.Addr().String(), "table", s.opts.Table)
	err = srv.Serve(l)
	s.mu.Lock()
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
	s.mu.Unlock()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

type item struct {
	id, name, price, stock string
}

// query runs a SELECT on the shared connection, reconnecting once if it
// broke.
func (s *Server) query(q string, args ...any) ([]item, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for try := 0; ; try++ {
		if s.conn == nil {
			c, err := client.ConnectWithTimeout(s.opts.MySQLAddr, s.opts.MySQLUser, s.opts.MySQLPassword, "", 5*time.Second, func(c *client.Conn) error {
				c.ReadTimeout, c.WriteTimeout = 5*time.Second, 5*time.Second
				return nil
			})
			if err != nil {
				return nil, fmt.Errorf("mysql %s: %w", s.opts.MySQLAddr, err)
			}
			s.conn = c
		}
		res, err := s.conn.Execute(q, args...)
		if err != nil {
			s.conn.Close()
			s.conn = nil
			if try == 0 {
				continue
			}
			return nil, err
		}
		var items []item
		for i := range res.Values {
			var it item
			for j, dst := range []*string{&it.id, &it.name, &it.price, &it.stock} {
				v, _ := res.GetString(i, j)
				*dst = v
			}
			items = append(items, it)
		}
		res.Close()
		return items, nil
	}
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	cols := fmt.Sprintf("SELECT id, name, price, stock FROM `%s`.`%s`", s.db, s.tbl)
	h := w.Header()
	h.Set("X-Generated-At", time.Now().UTC().Format(time.RFC3339Nano))
	h.Set("Content-Type", "text/html; charset=utf-8")
	switch {
	case r.URL.Path == "/healthz":
		h.Set("Cache-Control", "no-store")
		h.Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	case r.URL.Path == "/list.html":
		items, err := s.query(cols + " ORDER BY id LIMIT 1000")
		if err != nil {
			s.fail(w, err)
			return
		}
		tags := make([]string, len(items))
		var b strings.Builder
		b.WriteString("<!DOCTYPE html>\n<title>Items</title>\n<ul>\n")
		for i, it := range items {
			tags[i] = "item-" + it.id
			fmt.Fprintf(&b, "<li><a href=\"/item/%s.html\">%s</a> %s (%s in stock)</li>\n",
				it.id, html.EscapeString(it.name), html.EscapeString(it.price), it.stock)
		}
		b.WriteString("</ul>\n")
		h.Set("xkey", strings.Join(tags, " "))
		h.Set("Cache-Control", "max-age=3600")
		fmt.Fprint(w, b.String())
	case strings.HasPrefix(r.URL.Path, "/item/") && strings.HasSuffix(r.URL.Path, ".html"):
		id, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/item/"), ".html"), 10, 64)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		items, err := s.query(cols+" WHERE id = ?", id)
		if err != nil {
			s.fail(w, err)
			return
		}
		// The tag is set on a missing item too: its INSERT purges the 404.
		h.Set("xkey", "item-"+strconv.FormatInt(id, 10))
		h.Set("Cache-Control", "max-age=3600")
		if len(items) == 0 {
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprintf(w, "<!DOCTYPE html>\n<title>No item %d</title>\n<p>No item %d.</p>\n", id, id)
			return
		}
		it := items[0]
		fmt.Fprintf(w, "<!DOCTYPE html>\n<title>%s</title>\n<h1>%s</h1>\n<p>Price: %s</p>\n<p>Stock: %s</p>\n",
			html.EscapeString(it.name), html.EscapeString(it.name), html.EscapeString(it.price), it.stock)
	default:
		http.NotFound(w, r)
	}
}

func (s *Server) fail(w http.ResponseWriter, err error) {
	s.opts.Logger.Warn("demo backend query failed", "err", err)
	w.Header().Set("Cache-Control", "no-store")
	http.Error(w, "database unavailable", http.StatusServiceUnavailable)
}
