// Package hsm is stepfort's "pkcs11" KMS: upstream's PKCS#11 key manager
// (go.step.sm/crypto/kms/pkcs11, over crypto11) behind a layer that
//
//   - names the problem when the module, token, PIN or key is wrong,
//   - shares one PKCS#11 context per module and token in the process,
//   - bounds every signature in time and fails fast while the token is
//     gone, and
//   - reopens the token (finalize, initialize, log in, find the key again)
//     when a session is lost, without restarting the daemon.
//
// Importing it (with cgo) replaces upstream's "pkcs11" registration; without
// cgo the package is empty and upstream's refusing stub stays. See
// docs/hsm.md.
package hsm
