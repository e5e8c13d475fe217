#!/usr/bin/env bash
# Writes the job's secrets into deploy/k8s/secrets/ (ignored by git), where the
# kustomization's secretGenerator reads them: a random 32-byte gossip key, and
# a cluster CA with one certificate that every pod presents for mTLS (peers are
# checked against the CA, not by name, since pods come and go by address).
# usage: bash deploy/k8s/make-secrets.sh   (keeps existing files)
set -euo pipefail
dir="$(dirname "$0")/secrets"
mkdir -p "$dir"
cd "$dir"
umask 077
[ -f cluster.key ] || head -c 32 /dev/urandom | base64 -w0 >cluster.key
if [ ! -f tls.crt ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=alexring cluster CA" -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=alexring" -keyout tls.key -out tls.csr 2>/dev/null
  printf 'extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:alexring-coordinator,DNS:*.alexring-workers\n' >ext.cnf
  openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile ext.cnf -out tls.crt 2>/dev/null
  rm -f tls.csr ext.cnf ca.srl
fi
echo "secrets in $(pwd): cluster.key, ca.crt, tls.crt, tls.key (keep ca.key offline)"
