package deviceattest

import (
	"testing"

	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/internal/testenv"
)

// backends are the databases the tests run on.
var backends = testenv.Backends

func TestMain(m *testing.M) { testenv.RunMain(m) }

// openDB opens a fresh, empty database on backend.
func openDB(t *testing.T, backend string) nosql.DB { return testenv.OpenStore(t, backend) }
