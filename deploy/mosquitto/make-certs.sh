#!/bin/sh
# A private certificate authority for an edge-evolver fleet: the broker's TLS certificate and one
# client certificate per board (CN = its device_id) and for the host (CN = host-trainer), which
# Mosquitto's use_identity_as_username turns into the user name its ACL checks.
# See deploy/mosquitto/README.md ("TLS and one certificate per board"). Needs only sh and openssl.
set -eu

usage() {
    cat <<'EOF'
Usage: make-certs.sh [-d DIR] COMMAND [ARGS]

  ca                       make the CA: ca.key, ca.crt and an empty revocation list ca.crl
  server NAME_OR_IP...     the broker's certificate server.crt/server.key; every argument is a host
                           name or IP address the clients use to reach it (subjectAltName)
  client NAME              a client certificate clients/NAME.crt/.key with CN=NAME: a board's
                           device_id, or host-trainer for the host
  revoke NAME              revoke NAME's certificate and rewrite ca.crl (restart the broker after)
  crl                      rewrite ca.crl (it expires after CRL_DAYS; every client is refused then)

Everything goes to DIR: -d DIR, else $EDGE_EVOLVER_CERTS, else ./edge-evolver-certs.
Existing keys and certificates are kept: running a command twice changes nothing.
Names: letters, digits, '.', '_', '-', starting with a letter or digit, at most 64 characters.
Environment: KEY_TYPE=ec (P-256, default) or rsa (2048 bits); DAYS=825 (server and clients),
CA_DAYS=3650, CRL_DAYS=3650, CA_NAME="edge-evolver fleet CA".
EOF
}

die() {
    echo "make-certs.sh: $*" >&2
    exit 1
}

DIR=${EDGE_EVOLVER_CERTS:-./edge-evolver-certs}
KEY_TYPE=${KEY_TYPE:-ec}
DAYS=${DAYS:-825}
CA_DAYS=${CA_DAYS:-3650}
CRL_DAYS=${CRL_DAYS:-3650}
CA_NAME=${CA_NAME:-edge-evolver fleet CA}

# A client name becomes a file name and the MQTT user name the ACL's %u patterns put into topics:
# nothing that could leave the directory, start an option, or be an MQTT wildcard.
check_name() {
    case $1 in
        '' | [!A-Za-z0-9]* | *[!A-Za-z0-9._-]*) die "bad name '$1': use letters, digits, '.', '_', '-' (first a letter or digit)" ;;
    esac
    [ "${#1}" -le 64 ] || die "bad name '$1': longer than 64 characters"
}

# Relative paths inside DIR (the script cd's there), so a DIR with spaces needs no quoting in it.
write_openssl_config() {
    cat > db/openssl.cnf <<'EOF'
[ ca ]
default_ca = fleet_ca

[ fleet_ca ]
database = db/index.txt
new_certs_dir = db/newcerts
serial = db/serial
crlnumber = db/crlnumber
certificate = ca.crt
private_key = ca.key
default_md = sha256
policy = policy_cn
# Keep the subject exactly as requested (just the CN).
preserve = yes
email_in_dn = no

[ policy_cn ]
commonName = supplied

[ req ]
distinguished_name = req_dn
prompt = no

[ req_dn ]
CN = unused

[ ca_ext ]
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[ client_ext ]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ crl_ext ]
authorityKeyIdentifier = keyid
EOF
}

new_key() {
    # umask: the key is 0600 from its first byte, not chmod-ed after being readable.
    case $KEY_TYPE in
        ec) (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null) ;;
        rsa) (umask 077 && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null) ;;
        *) die "KEY_TYPE must be ec or rsa, not '$KEY_TYPE'" ;;
    esac
    chmod 600 "$1"
}

# sign CN KEY CERT EXTFILE SECTION: a CSR for CN, signed by the CA and recorded in its database.
sign() {
    openssl req -new -config db/openssl.cnf -key "$2" -subj "/CN=$1" -out db/request.csr
    openssl ca -batch -config db/openssl.cnf -notext -days "$DAYS" -extfile "$4" -extensions "$5" \
        -in db/request.csr -out "$3.tmp" 2>db/openssl.log || { cat db/openssl.log >&2; die "signing $1 failed"; }
    rm -f db/request.csr
    mv "$3.tmp" "$3"
    chmod 644 "$3"
}

make_crl() {
    openssl ca -batch -config db/openssl.cnf -gencrl -crldays "$CRL_DAYS" -crlexts crl_ext -out ca.crl.tmp \
        2>db/openssl.log || { cat db/openssl.log >&2; die "writing the CRL failed"; }
    mv ca.crl.tmp ca.crl
    chmod 644 ca.crl
}

need_ca() {
    [ -f ca.key ] && [ -f ca.crt ] && [ -f db/openssl.cnf ] || die "no CA in $DIR: run 'make-certs.sh ca' first"
}

cmd_ca() {
    if [ -f ca.key ] && [ -f ca.crt ]; then
        echo "CA exists, kept: $DIR/ca.crt"
        return
    fi
    mkdir -p db/newcerts clients revoked
    write_openssl_config
    : > db/index.txt
    # Allows a new certificate for a name whose old one was revoked (the board re-flashed).
    echo "unique_subject = no" > db/index.txt.attr
    openssl rand -hex 16 > db/serial
    echo 1000 > db/crlnumber
    new_key ca.key
    openssl req -new -x509 -config db/openssl.cnf -key ca.key -subj "/CN=$CA_NAME" -days "$CA_DAYS" \
        -sha256 -extensions ca_ext -out ca.crt
    chmod 644 ca.crt
    make_crl
    echo "made the CA: $DIR/ca.crt (give it to every board and the broker), $DIR/ca.key (keep it offline), $DIR/ca.crl"
}

# A subjectAltName entry: IP: for an IPv4 or IPv6 address, DNS: for a host name.
san_entry() {
    case $1 in
        '' | *[!0-9A-Za-z.:-]* | [.-]*) die "bad host name or address '$1'" ;;
        *:*) case $1 in *[!0-9A-Fa-f:]*) die "bad IPv6 address '$1'" ;; esac; echo "IP:$1" ;;
        *[!0-9.]*) echo "DNS:$1" ;;
        *) echo "IP:$1" ;;
    esac
}

cmd_server() {
    [ $# -ge 1 ] || die "server: give the host names and/or IP addresses of the broker (e.g. broker.lab 192.168.10.1)"
    need_ca
    if [ -f server.crt ]; then
        echo "server certificate exists, kept: $DIR/server.crt (delete server.crt and server.key to remake it)"
        return
    fi
    san=""
    for name in "$@"; do
        san="${san:+$san, }$(san_entry "$name")" || exit 1
    done
    {
        echo "[ server_ext ]"
        echo "basicConstraints = critical, CA:false"
        echo "keyUsage = critical, digitalSignature, keyEncipherment"
        echo "extendedKeyUsage = serverAuth"
        echo "subjectKeyIdentifier = hash"
        echo "authorityKeyIdentifier = keyid"
        echo "subjectAltName = $san"
    } > db/server_ext.cnf
    [ -f server.key ] || new_key server.key
    sign "$1" server.key server.crt db/server_ext.cnf server_ext
    echo "made the broker certificate $DIR/server.crt for $san"
}

cmd_client() {
    [ $# -eq 1 ] || die "client: give one name (a board's device_id, or host-trainer)"
    check_name "$1"
    need_ca
    if [ -f "clients/$1.crt" ]; then
        echo "certificate for $1 exists, kept: $DIR/clients/$1.crt"
        return
    fi
    [ -f "clients/$1.key" ] || new_key "clients/$1.key"
    sign "$1" "clients/$1.key" "clients/$1.crt" db/openssl.cnf client_ext
    echo "made $DIR/clients/$1.crt and $DIR/clients/$1.key for CN=$1"
}

cmd_revoke() {
    [ $# -eq 1 ] || die "revoke: give one name"
    check_name "$1"
    need_ca
    if [ ! -f "clients/$1.crt" ]; then
        ls "revoked/$1".*.crt >/dev/null 2>&1 || die "no certificate for $1 in $DIR/clients"
        echo "$1 is already revoked"
        return
    fi
    serial=$(openssl x509 -in "clients/$1.crt" -noout -serial | sed 's/^serial=//')
    openssl ca -batch -config db/openssl.cnf -revoke "clients/$1.crt" 2>db/openssl.log \
        || { cat db/openssl.log >&2; die "revoking $1 failed"; }
    make_crl
    # Moved aside so that 'client NAME' can issue a new certificate for a re-flashed board.
    mv "clients/$1.crt" "revoked/$1.$serial.crt"
    rm -f "clients/$1.key"
    echo "revoked $1 (serial $serial); $DIR/ca.crl rewritten: copy it to the broker and restart mosquitto"
}

while getopts d:h option; do
    case $option in
        d) DIR=$OPTARG ;;
        h) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { usage >&2; exit 2; }
command -v openssl >/dev/null 2>&1 || die "openssl is not installed (apt-get install openssl)"
command=$1
shift
# 0700: the directory holds the CA's private key.
(umask 077 && mkdir -p "$DIR")
cd "$DIR"
case $command in
    ca) [ $# -eq 0 ] || die "ca takes no arguments"; cmd_ca ;;
    server) cmd_server "$@" ;;
    client) cmd_client "$@" ;;
    revoke) cmd_revoke "$@" ;;
    crl) need_ca; make_crl; echo "rewrote $DIR/ca.crl (valid $CRL_DAYS days)" ;;
    help | -h | --help) usage ;;
    *) usage >&2; exit 2 ;;
esac
