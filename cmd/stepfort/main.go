package main

import (
	_ "github.com/smallstep/certificates/ca"
	_ "github.com/smallstep/certificates/cas/stepcas"
	_ "github.com/urfave/cli"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "go.etcd.io/bbolt"
	_ "golang.org/x/crypto/ocsp"
)

func main() {}
