package canal

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/pingcap/tidb/pkg/parser"
	"github.com/pingcap/tidb/pkg/parser/ast"
	_ "github.com/pingcap/tidb/pkg/parser/test_driver" // literal values in parsed DDL
)

// Schema is the column layout of the included tables at one binlog
// position. A row event without column metadata (binlog_row_metadata below
// FULL) carries values only, so their names come from here: the schema at
// the saved position, replayed forward through every DDL event. A Schema is
// never modified once built; DDL makes a new one.
type Schema struct {
	// Tables maps "db.table" to its column names in order.
	Tables map[string][]string `json:"tables"`
	// Uncertain maps "db.table" to why its columns are unknown (a DDL that
	// could not be replayed). Its rows stop the stream unless the binlog
	// carries column names.
	Uncertain map[string]string `json:"uncertain,omitempty"`
}

// Columns returns the table's columns and whether they are known for sure.
func (s *Schema) Columns(table string) (cols []string, why string) {
	if why, ok := s.Uncertain[table]; ok {
		return nil, why
	}
	cols, ok := s.Tables[table]
	if !ok {
		return nil, "the table is not in the schema history"
	}
	return cols, ""
}

func (s *Schema) clone() *Schema {
	return &Schema{Tables: maps.Clone(s.Tables), Uncertain: maps.Clone(s.Uncertain)}
}

// withColumns returns a schema where table has cols for certain (learned
// from binlog column metadata).
func (s *Schema) withColumns(table string, cols []string) *Schema {
	n := s.clone()
	if n.Tables == nil {
		n.Tables = map[string][]string{}
	}
	n.Tables[table] = cols
	delete(n.Uncertain, table)
	return n
}

// LoadSchema reads the current columns of every table that match accepts.
// It is right only for the server's current position: call it on a first
// start, before reading any event.
func LoadSchema(conn *client.Conn, accepts func(table string) bool) (*Schema, error) {
	r, err := conn.Execute(`SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS
		WHERE TABLE_SCHEMA NOT IN ('mysql','information_schema','performance_schema','sys')
		ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION`)
	if err != nil {
		return nil, fmt.Errorf("read schema: %w", err)
	}
	s := &Schema{Tables: map[string][]string{}}
	for i := range r.RowNumber() {
		db, _ := r.GetString(i, 0)
		tbl, _ := r.GetString(i, 1)
		col, _ := r.GetString(i, 2)
		name := db + "." + tbl
		if accepts(name) {
			s.Tables[name] = append(s.Tables[name], col)
		}
	}
	return s, nil
}

var ddlStart = regexp.MustCompile(`(?is)^\s*(/\*.*?\*/\s*)*(ALTER|CREATE|DROP|RENAME|TRUNCATE)\b`)

// ApplyDDL replays one query event on the schema. It returns the schema to
// use afterwards (s itself when nothing changed) and the tables it touched.
// A DDL it cannot replay with certainty marks every tracked table the query
// names as uncertain rather than guessing.
func (s *Schema) ApplyDDL(p *parser.Parser, defaultDB, query string, accepts func(string) bool) (*Schema, []string) {
	if !ddlStart.MatchString(query) {
		return s, nil
	}
	stmts, _, err := p.Parse(query, "", "")
	if err != nil {
		return s.markUncertain(query, fmt.Sprintf("DDL not understood (%v): %.200s", err, query))
	}
	n := s.clone()
	if n.Tables == nil {
		n.Tables = map[string][]string{}
	}
	if n.Uncertain == nil {
		n.Uncertain = map[string]string{}
	}
	var touched []string
	name := func(t *ast.TableName) string {
		db := t.Schema.O
		if db == "" {
			db = defaultDB
		}
		return db + "." + t.Name.O
	}
	set := func(table string, cols []string, uncertain string) {
		touched = append(touched, table)
		if !accepts(table) {
			delete(n.Tables, table)
			delete(n.Uncertain, table)
			return
		}
		if uncertain != "" {
			delete(n.Tables, table)
			n.Uncertain[table] = uncertain
			return
		}
		n.Tables[table] = cols
		delete(n.Uncertain, table)
	}
	drop := func(table string) {
		touched = append(touched, table)
		delete(n.Tables, table)
		delete(n.Uncertain, table)
	}
	for _, stmt := range stmts {
		switch st := stmt.(type) {
		case *ast.CreateTableStmt:
			t := name(st.Table)
			switch {
			case st.ReferTable != nil:
				src := name(st.ReferTable)
				cols, why := n.Columns(src)
				if why != "" && accepts(t) {
					set(t, nil, fmt.Sprintf("CREATE TABLE %s LIKE %s: columns of %s unknown (%s)", t, src, src, why))
				} else {
					set(t, slices.Clone(cols), "")
				}
			case st.Select != nil:
				set(t, nil, fmt.Sprintf("CREATE TABLE %s ... SELECT: columns not replayable", t))
			default:
				var cols []string
				for _, c := range st.Cols {
					cols = append(cols, c.Name.Name.O)
				}
				set(t, cols, "")
			}
		case *ast.DropTableStmt:
			for _, t := range st.Tables {
				drop(name(t))
			}
		case *ast.RenameTableStmt:
			for _, tt := range st.TableToTables {
				from, to := name(tt.OldTable), name(tt.NewTable)
				cols, why := n.Columns(from)
				drop(from)
				set(to, cols, why)
			}
		case *ast.AlterTableStmt:
			t := name(st.Table)
			cols, why := n.Columns(t)
			if why != "" {
				set(t, nil, why)
				continue
			}
			cols = slices.Clone(cols)
			target := t
			for _, spec := range st.Specs {
				var err error
				cols, target, err = alterColumns(cols, target, spec, defaultDB)
				if err != nil {
					why = fmt.Sprintf("ALTER TABLE %s: %v", t, err)
					break
				}
			}
			if target != t {
				drop(t)
			}
			set(target, cols, why)
		}
	}
	return n, touched
}

// markUncertain marks each tracked table whose name appears in query.
func (s *Schema) markUncertain(query, why string) (*Schema, []string) {
	q := strings.ToLower(query)
	n := s.clone()
	if n.Uncertain == nil {
		n.Uncertain = map[string]string{}
	}
	var touched []string
	for t := range s.Tables {
		_, tbl, _ := strings.Cut(t, ".")
		if strings.Contains(q, strings.ToLower(tbl)) {
			delete(n.Tables, t)
			n.Uncertain[t] = why
			touched = append(touched, t)
		}
	}
	return n, touched
}

// alterColumns applies one ALTER TABLE clause to cols.
func alterColumns(cols []string, table string, spec *ast.AlterTableSpec, defaultDB string) ([]string, string, error) {
	index := func(name string) int {
		return slices.IndexFunc(cols, func(c string) bool { return strings.EqualFold(c, name) })
	}
	place := func(cols []string, col string, pos *ast.ColumnPosition) ([]string, error) {
		if pos == nil || pos.Tp == ast.ColumnPositionNone {
			return append(cols, col), nil
		}
		if pos.Tp == ast.ColumnPositionFirst {
			return slices.Insert(cols, 0, col), nil
		}
		i := index(pos.RelativeColumn.Name.O)
		if i < 0 {
			return nil, fmt.Errorf("AFTER %s: no such column", pos.RelativeColumn.Name.O)
		}
		return slices.Insert(cols, i+1, col), nil
	}
	switch spec.Tp {
	case ast.AlterTableAddColumns:
		for _, c := range spec.NewColumns {
			if index(c.Name.Name.O) >= 0 {
				if spec.IfNotExists {
					continue
				}
				return nil, table, fmt.Errorf("ADD COLUMN %s: the column exists", c.Name.Name.O)
			}
			var err error
			if cols, err = place(cols, c.Name.Name.O, spec.Position); err != nil {
				return nil, table, err
			}
		}
	case ast.AlterTableDropColumn:
		i := index(spec.OldColumnName.Name.O)
		if i < 0 {
			if spec.IfExists {
				return cols, table, nil
			}
			return nil, table, fmt.Errorf("DROP COLUMN %s: no such column", spec.OldColumnName.Name.O)
		}
		cols = slices.Delete(cols, i, i+1)
	case ast.AlterTableModifyColumn, ast.AlterTableChangeColumn:
		old := spec.NewColumns[0].Name.Name.O
		if spec.OldColumnName != nil {
			old = spec.OldColumnName.Name.O
		}
		i := index(old)
		if i < 0 {
			return nil, table, fmt.Errorf("column %s: no such column", old)
		}
		newName := spec.NewColumns[0].Name.Name.O
		if spec.Position == nil || spec.Position.Tp == ast.ColumnPositionNone {
			cols[i] = newName
			return cols, table, nil
		}
		cols = slices.Delete(cols, i, i+1)
		var err error
		if cols, err = place(cols, newName, spec.Position); err != nil {
			return nil, table, err
		}
	case ast.AlterTableRenameColumn:
		i := index(spec.OldColumnName.Name.O)
		if i < 0 {
			return nil, table, fmt.Errorf("RENAME COLUMN %s: no such column", spec.OldColumnName.Name.O)
		}
		cols[i] = spec.NewColumnName.Name.O
	case ast.AlterTableRenameTable:
		db := spec.NewTable.Schema.O
		if db == "" {
			db = defaultDB
		}
		table = db + "." + spec.NewTable.Name.O
	}
	return cols, table, nil
}
