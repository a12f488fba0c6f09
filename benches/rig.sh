# Sourced by benches/instructions.sh and benches/memcpy_sites.sh (from the repository's root):
# the setup both count per-request work on. usher's config on 127.0.0.1:17500 in front of the
# shared harness's 1-worker nginx upstream on 127.0.0.1:17501: /static/ is a 1 KiB file from
# memory, /cache/ is proxied and cached (the upstream allows an hour: after the first request
# every one is a hit), /big is the upstream's 1 MiB file, anything else is proxied. The same
# routes over TLS on 127.0.0.1:17502, with a self-signed certificate made here.
#   rig_start NAME   $WORK (a new temp dir, with $WORK/proxy.toml) and the upstream running;
#                    $BASE, the URL to put paths after: http://127.0.0.1:17500, or with
#                    SCHEME=https, https://127.0.0.1:17502
#   rig_stop         stops the upstream and removes $WORK
#   rig_end PID [SIG]  stops a process the script started and waits for it (for cleanup traps:
#                    it never fails, where under set -e a failing wait would end the trap early
#                    and leave the upstream running)
HARNESS=$(cd ../shared/bench && pwd)
WORK=""

rig_start() {
  WORK=$(mktemp -d "/tmp/usher-$1.XXXXXX")
  chmod 755 "$WORK"     # the upstream's workers may run as another user and read $DOCROOT
  export UP_DIR=$WORK/up UP_CPUS=${UP_CPUS:-1} UPSTREAM_PORT=17501 DOCROOT=$WORK/www
  BODY100=$(printf '0123456789%.0s' 1 2 3 4 5 6 7 8 9 10)
  export BODY100
  mkdir -p "$UP_DIR" "$DOCROOT/static"
  head -c 1024 /dev/urandom > "$DOCROOT/static/1k.bin"
  head -c 1048576 /dev/urandom > "$DOCROOT/big.bin"     # the upstream's /big
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
  case ${SCHEME:-http} in
    http) BASE=http://127.0.0.1:17500 ;;
    https) BASE=https://127.0.0.1:17502 ;;
    *) echo "SCHEME is http or https" >&2; return 1 ;;
  esac
  "$HARNESS/lib/upstream.sh" start
  cat > "$WORK/proxy.toml" <<CONF
[server]
http = "127.0.0.1:17500"
https = "127.0.0.1:17502"
certs_dir = "$WORK/certs"
access_log = "text"

[[site]]
names = ["127.0.0.1"]
default = true
http_redirect = false        # else every plain request is answered with a redirect to https
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"

[[site.route]]
path = "/static/"
static = "$DOCROOT"

[[site.route]]
path = "/cache/"
proxy = ["127.0.0.1:$UPSTREAM_PORT"]
cache = {}

[[site.route]]
path = "/"
proxy = ["127.0.0.1:$UPSTREAM_PORT"]
CONF
}

rig_stop() {
  "$HARNESS/lib/upstream.sh" stop
  [ -z "$WORK" ] || rm -rf "$WORK"
}

rig_end() {
  [ -n "$1" ] || return 0
  kill "-${2:-TERM}" "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
