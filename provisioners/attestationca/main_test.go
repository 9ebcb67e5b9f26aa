package attestationca

import (
	"testing"

	"github.com/stepfort/stepfort/internal/testenv"
)

// TestMain stops the PostgreSQL server testenv.OpenStore starts.
func TestMain(m *testing.M) { testenv.RunMain(m) }
