// Package builtin registers every plugin compiled into stepfort. Import it
// for its side effect, once, wherever ca.json's "stepfort.plugins" must be
// understood (the binary, and tests that load a configuration `stepfort
// init` wrote), so no list of plugins is kept in two places.
package builtin

import (
	_ "github.com/stepfort/stepfort/ha"
	_ "github.com/stepfort/stepfort/internal/audit"
	_ "github.com/stepfort/stepfort/provisioners/attestationca"
	_ "github.com/stepfort/stepfort/provisioners/billing"
	_ "github.com/stepfort/stepfort/provisioners/certindex"
	_ "github.com/stepfort/stepfort/provisioners/deviceattest"
	_ "github.com/stepfort/stepfort/provisioners/dynamicscep"
	_ "github.com/stepfort/stepfort/provisioners/inventory"
)
