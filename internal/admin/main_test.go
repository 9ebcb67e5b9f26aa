package admin

import (
	"testing"

	"github.com/stepfort/stepfort/internal/testenv"
)

// TestMain stops the PostgreSQL server the paging tests start.
func TestMain(m *testing.M) { testenv.RunMain(m) }
