// Go database/sql with go-sql-driver/mysql, run straight to the server and through the proxy
// (tests/test_clients_go.py). Built offline against Debian's golang-github-go-sql-driver-mysql-dev
// (GOPATH=/usr/share/gocode, GO111MODULE=off).
//
// Prints one JSON object {"scenario": [[label, value], ...], ...}; nothing in it may depend on
// which of the two it talked to. An error ends only its own scenario and is recorded as a value.
// Usage: DB_HOST=... DB_PORT=... DB_USER=... DB_PASSWORD=... DB_NAME=... client [scenario ...]
package main

import (
	"context"
	"crypto/md5"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
)

type entry [2]interface{}

type recorder struct{ items []entry }

func (r *recorder) add(label string, v interface{}) { r.items = append(r.items, entry{label, v}) }

func dsn(params string) string {
	cfg := fmt.Sprintf("%s:%s@tcp(%s:%s)/%s?timeout=10s&readTimeout=30s&writeTimeout=30s",
		os.Getenv("DB_USER"), os.Getenv("DB_PASSWORD"), os.Getenv("DB_HOST"), os.Getenv("DB_PORT"), os.Getenv("DB_NAME"))
	if params != "" {
		cfg += "&" + params
	}
	return cfg
}

func open(params string) *sql.DB {
	db, err := sql.Open("mysql", dsn(params))
	if err != nil {
		panic(err)
	}
	return db
}

// errFacts: the server's error number and message, or the driver's own error text.
func errFacts(err error) interface{} {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return []interface{}{me.Number, me.Message}
	}
	if err == nil {
		return nil
	}
	return err.Error()
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

// rows reads every row as strings (NULL as nil) with the column types the driver reports.
func rows(r *sql.Rows, err error) interface{} {
	if err != nil {
		return map[string]interface{}{"error": errFacts(err)}
	}
	defer r.Close()
	cols, _ := r.ColumnTypes()
	var meta []interface{}
	for _, c := range cols {
		nullable, _ := c.Nullable()
		meta = append(meta, []interface{}{c.Name(), c.DatabaseTypeName(), c.ScanType().String(), nullable})
	}
	var out [][]interface{}
	for r.Next() {
		vals := make([]sql.RawBytes, len(cols))
		ptrs := make([]interface{}, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		must(r.Scan(ptrs...))
		row := make([]interface{}, len(cols))
		for i, v := range vals {
			if v != nil {
				row[i] = string(v)
			}
		}
		out = append(out, row)
	}
	return map[string]interface{}{"columns": meta, "rows": out, "err": errFacts(r.Err())}
}

func result(res sql.Result, err error) interface{} {
	if err != nil {
		return map[string]interface{}{"error": errFacts(err)}
	}
	affected, _ := res.RowsAffected()
	id, _ := res.LastInsertId()
	return []int64{affected, id}
}

// work runs the same statements over one pool, with or without interpolateParams
// (client-side placeholders: COM_QUERY, or COM_STMT_PREPARE / EXECUTE / CLOSE each time).
func work(r *recorder, params string, table string) {
	db := open(params)
	defer db.Close()
	db.SetMaxOpenConns(3)
	ctx := context.Background()
	_, err := db.Exec("DROP TABLE IF EXISTS " + table)
	must(err)
	_, err = db.Exec("CREATE TABLE " + table + " (id INT AUTO_INCREMENT PRIMARY KEY, s VARCHAR(30), f DOUBLE, b BLOB, t DATETIME(6), n INT NULL, UNIQUE KEY (s))")
	must(err)
	ins := "INSERT INTO " + table + " (s, f, b, t, n) VALUES (?, ?, ?, ?, ?)"
	for i, s := range []string{"one", "twö", "th'ree"} {
		var n interface{}
		if i > 0 {
			n = i
		}
		r.add(fmt.Sprintf("insert %d", i), result(db.Exec(ins, s, float64(i)*1.25, []byte{0, byte(i), 255},
			time.Date(2024, 1, 2, 3, 4, 5, 600000000, time.UTC), n)))
	}
	r.add("duplicate", result(db.Exec(ins, "one", 0, nil, nil, nil)))
	r.add("multi-row update", result(db.Exec("UPDATE "+table+" SET f = f + ? WHERE id <= ?", 1.5, 2)))
	r.add("select", rows(db.Query("SELECT id, s, f, HEX(b), t, n, ? AS echo FROM "+table+" WHERE id >= ? ORDER BY id", "é", 1)))
	r.add("types", rows(db.Query("SELECT 1, -2.5, 'x', NULL, CAST('2024-02-29' AS DATE), 18446744073709551615, x'00ff', JSON_ARRAY(1), CAST(? AS SIGNED)", "42")))

	// A prepared statement reused many times and closed, as a long-running service does.
	stmt, err := db.Prepare("SELECT COUNT(*) FROM " + table + " WHERE id > ?")
	must(err)
	var total int
	for i := 0; i < 50; i++ {
		var n int
		must(stmt.QueryRow(i % 4).Scan(&n))
		total += n
	}
	must(stmt.Close())
	r.add("prepared reused", total)
	sum := 0
	for i := 0; i < 300; i++ {
		st, err := db.Prepare(fmt.Sprintf("SELECT %d + ?", i))
		must(err)
		var n int
		must(st.QueryRow(1).Scan(&n))
		sum += n
		must(st.Close())
	}
	r.add("300 statements prepared and closed", sum)
	// Closed statements are closed on the server too (its max_prepared_stmt_count is global).
	r.add("server keeps at most a few", rows(db.Query("SELECT VARIABLE_VALUE <= 3 FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'PREPARED_STMT_COUNT'")))

	// Transactions: commit, rollback, a read inside.
	tx, err := db.BeginTx(ctx, nil)
	must(err)
	r.add("tx insert", result(tx.Exec(ins, "tx", 0, nil, nil, nil)))
	r.add("tx sees it", rows(tx.Query("SELECT COUNT(*), @@in_transaction FROM "+table)))
	must(tx.Rollback())
	r.add("rolled back", rows(db.Query("SELECT COUNT(*) FROM "+table+" WHERE s = 'tx'")))
	tx, err = db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelSerializable})
	must(err)
	r.add("serializable", rows(tx.Query("SELECT @@tx_isolation")))
	_, err = tx.Exec(ins, "committed", 0, nil, nil, nil)
	must(err)
	must(tx.Commit())
	tx, err = db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	must(err)
	r.add("read-only tx write", result(tx.Exec(ins, "ro", 0, nil, nil, nil)))
	must(tx.Rollback())
	r.add("after", rows(db.Query("SELECT s FROM "+table+" ORDER BY id")))
	r.add("isolation after", rows(db.Query("SELECT @@tx_isolation")))
	r.add("stats", db.Stats().OpenConnections <= 3)
}

var scenarios = []struct {
	name string
	fn   func(r *recorder)
}{
	{"prepared_statements", func(r *recorder) { work(r, "", "go_native") }},
	{"interpolate_params", func(r *recorder) { work(r, "interpolateParams=true", "go_interp") }},
	{"multi_statements", func(r *recorder) {
		db := open("multiStatements=true")
		defer db.Close()
		r.add("exec", result(db.Exec("DROP TABLE IF EXISTS go_multi; CREATE TABLE go_multi (id INT); INSERT INTO go_multi VALUES (1), (2), (3); UPDATE go_multi SET id = id + 1 WHERE id > 1")))
		rs, err := db.Query("SELECT id FROM go_multi ORDER BY id; SELECT 'second', COUNT(*) FROM go_multi")
		must(err)
		var sets []interface{}
		for {
			var set [][]string
			cols, _ := rs.Columns()
			for rs.Next() {
				vals := make([]sql.RawBytes, len(cols))
				ptrs := make([]interface{}, len(cols))
				for i := range vals {
					ptrs[i] = &vals[i]
				}
				must(rs.Scan(ptrs...))
				row := []string{}
				for _, v := range vals {
					row = append(row, string(v))
				}
				set = append(set, row)
			}
			sets = append(sets, set)
			if !rs.NextResultSet() {
				break
			}
		}
		r.add("two result sets", sets)
		must(rs.Close())
		r.add("error in the middle", result(db.Exec("DO 1; SELEKT 2; DO 3")))
		r.add("after", rows(db.Query("SELECT COUNT(*) FROM go_multi")))
		single := open("")
		defer single.Close()
		r.add("without multiStatements", result(single.Exec("DO 1; DO 2")))
	}},
	{"stored_procedures", func(r *recorder) {
		db := open("multiStatements=true")
		defer db.Close()
		_, err := db.Exec("DROP PROCEDURE IF EXISTS go_proc")
		must(err)
		_, err = db.Exec("CREATE PROCEDURE go_proc(IN n INT) BEGIN SELECT seq FROM seq_1_to_5 WHERE seq <= n; END")
		must(err)
		for _, interp := range []string{"", "interpolateParams=true"} {
			d := open(interp)
			r.add("call "+interp, rows(d.Query("CALL go_proc(?)", 3)))
			r.add("call again "+interp, rows(d.Query("CALL go_proc(?)", 2)))
			r.add("exec call "+interp, result(d.Exec("CALL go_proc(1)")))
			r.add("after "+interp, rows(d.Query("SELECT 5")))
			d.Close()
		}
	}},
	{"context_cancel", func(r *recorder) {
		db := open("")
		defer db.Close()
		db.SetMaxOpenConns(1)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		var x int
		err := db.QueryRowContext(ctx, "SELECT SLEEP(3)").Scan(&x)
		r.add("timed out", errFacts(err))
		// The driver drops the connection it gave up on; the pool opens a new one.
		r.add("next query", rows(db.Query("SELECT 'fresh'")))
		ctx2, cancel2 := context.WithCancel(context.Background())
		cancel2()
		_, err = db.ExecContext(ctx2, "DO 1")
		r.add("cancelled before start", errFacts(err))
	}},
	{"kill_on_timeout", func(r *recorder) {
		// What a Go service does when a query overruns its deadline: KILL QUERY from another connection.
		db := open("")
		defer db.Close()
		db.SetMaxOpenConns(2)
		ctx := context.Background()
		conn, err := db.Conn(ctx)
		must(err)
		defer conn.Close()
		var id int64
		must(conn.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id))
		var wg sync.WaitGroup
		var slow interface{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var v int
			err := conn.QueryRowContext(ctx, "SELECT SLEEP(5)").Scan(&v)
			if err != nil {
				slow = errFacts(err)
			} else {
				slow = v
			}
		}()
		time.Sleep(400 * time.Millisecond)
		_, err = db.ExecContext(ctx, fmt.Sprintf("KILL QUERY %d", id))
		r.add("kill query", errFacts(err))
		wg.Wait()
		r.add("slow query result", slow)
		var same int64
		must(conn.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&same))
		r.add("same connection after", same == id)
		_, err = db.ExecContext(ctx, fmt.Sprintf("KILL %d", id))
		r.add("kill connection", errFacts(err))
		time.Sleep(200 * time.Millisecond)
		var v int
		err = conn.QueryRowContext(ctx, "SELECT 1").Scan(&v)
		r.add("killed connection", errFacts(err))
		r.add("pool still works", rows(db.Query("SELECT 2")))
	}},
	{"charset_and_collation", func(r *recorder) {
		for _, p := range []string{"", "charset=latin1", "collation=utf8mb4_unicode_ci", "charset=utf8mb4&collation=utf8mb4_bin"} {
			db := open(p)
			r.add(p, rows(db.Query("SELECT @@character_set_client, @@collation_connection, 'é', HEX('é')")))
			db.Close()
		}
	}},
	{"errors", func(r *recorder) {
		db := open("")
		defer db.Close()
		for _, q := range []string{"SELEKT 1", "SELECT * FROM no_such_table", "SELECT 1 FROM DUAL WHERE 1 = (SELECT 1 UNION SELECT 2)"} {
			r.add(q, rows(db.Query(q)))
		}
		bad, _ := sql.Open("mysql", strings.Replace(dsn(""), ":"+os.Getenv("DB_PASSWORD")+"@", ":wrong@", 1))
		err := bad.Ping()
		var me *mysql.MySQLError
		if errors.As(err, &me) {
			r.add("wrong password", me.Number)
		} else {
			r.add("wrong password", errFacts(err))
		}
		bad.Close()
	}},
	{"large_result", func(r *recorder) {
		db := open("")
		defer db.Close()
		rs, err := db.Query("SELECT seq, REPEAT('g', seq % 500) FROM seq_1_to_50000")
		must(err)
		h := md5.New()
		n := 0
		for rs.Next() {
			var a int
			var b string
			must(rs.Scan(&a, &b))
			fmt.Fprintf(h, "%d:%s;", a, b)
			n++
		}
		must(rs.Err())
		rs.Close()
		r.add("rows", []interface{}{n, hex.EncodeToString(h.Sum(nil))})
	}},
}

func main() {
	for _, name := range []string{"DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME"} {
		if os.Getenv(name) == "" {
			fmt.Fprintf(os.Stderr, "missing environment variable %s\n", name)
			os.Exit(2)
		}
	}
	only := map[string]bool{}
	for _, a := range os.Args[1:] {
		only[a] = true
	}
	out := map[string][]entry{}
	var names []string
	for _, s := range scenarios {
		if len(only) > 0 && !only[s.name] {
			continue
		}
		r := &recorder{}
		func() {
			defer func() {
				if p := recover(); p != nil {
					if err, ok := p.(error); ok {
						r.add("exception", errFacts(err))
					} else {
						r.add("exception", fmt.Sprint(p))
					}
				}
			}()
			s.fn(r)
		}()
		out[s.name] = r.items
		names = append(names, s.name)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
