#!/usr/bin/env bash
# Makes the certificates a KMIP test needs, all ECDSA P-256 and PEM, in DIR:
#   ca.crt / ca.key          a self-signed CA that signs both certificates below
#   server.crt / server.key  CN=localhost, SAN DNS:localhost + IP:127.0.0.1, EKU serverAuth
#   client.crt / client.key  CN=sealdb, EKU clientAuth (PyKMIP checks this EKU and uses
#                            the CN as the owner of the objects the client creates)
# Keys are mode 0600. PyKMIP's server only offers ECDSA cipher suites with GCM
# (see kmip_server.py), hence ECDSA keys everywhere.
# Usage: make_kmip_certs.sh DIR
set -euo pipefail
dir="${1:?usage: make_kmip_certs.sh DIR}"
mkdir -p "$dir"
cd "$dir"
umask 077 # keys (and the scratch files) are created 0600
days=30

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

newkey ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=sealdb test KMIP CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.crt

# sign NAME CN EXTENSIONS: NAME.key -> NAME.crt signed by the CA
sign() {
  newkey "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -sha256 -days "$days" -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
sign server localhost "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1"
sign client sealdb "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"

rm -f ca.srl
chmod 600 ./*.key
chmod 644 ./*.crt
