package benchproc

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// CloneDB creates PostgreSQL database name as a copy of database template
// (a freshly initialised CA), on the server at dsn.
func CloneDB(ctx context.Context, dsn, name, template string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close(context.Background())
	q := fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s", pgx.Identifier{name}.Sanitize(), pgx.Identifier{template}.Sanitize())
	if _, err := conn.Exec(ctx, q); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// PGSessions returns pg_stat_database.sessions of database name: how many
// connections were established to it (counted when they end). database/sql
// keeps only two idle connections by default, so under concurrent load a
// server keeps opening new ones; this shows how many.
func PGSessions(ctx context.Context, dsn, name string) (int64, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close(context.Background())
	var n int64
	err = conn.QueryRow(ctx, "SELECT sessions FROM pg_stat_database WHERE datname = $1", name).Scan(&n)
	return n, err
}
