package provfields

import (
	"errors"
	"testing"

	"github.com/smallstep/certificates/authority/provisioner"
)

func TestOptionsAndClaimsOfEveryType(t *testing.T) {
	claims := &provisioner.Claims{}
	withOptions := []provisioner.Interface{
		&provisioner.JWK{Name: "jwk", Claims: claims},
		&provisioner.OIDC{Name: "oidc", Claims: claims},
		&provisioner.GCP{Name: "gcp", Claims: claims},
		&provisioner.AWS{Name: "aws", Claims: claims},
		&provisioner.Azure{Name: "azure", Claims: claims},
		&provisioner.ACME{Name: "acme", Claims: claims},
		&provisioner.X5C{Name: "x5c", Claims: claims},
		&provisioner.K8sSA{Name: "k8s", Claims: claims},
		&provisioner.SCEP{Name: "scep", Claims: claims},
		&provisioner.Nebula{Name: "nebula", Claims: claims},
	}
	for _, p := range withOptions {
		o, err := Options(p)
		if err != nil || o == nil {
			t.Fatalf("%T: %v, %v", p, o, err)
		}
		o.Webhooks = append(o.Webhooks, &provisioner.Webhook{Name: "added"})
		again, _ := Options(p)
		if again != o || len(again.Webhooks) != 1 {
			t.Fatalf("%T: options were not stored in the provisioner", p)
		}
		if Claims(p) != claims {
			t.Fatalf("%T: claims not returned", p)
		}
	}
	sshpop := &provisioner.SSHPOP{Name: "sshpop", Claims: claims}
	if _, err := Options(sshpop); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("SSHPOP options: %v, want ErrUnsupported", err)
	}
	if Claims(sshpop) != claims || Claims(&provisioner.JWK{}) != nil {
		t.Fatal("claims of SSHPOP or of a provisioner without claims")
	}
}
