# Sourced by benches/instructions.sh and benches/memcpy_sites.sh (from the repository's root):
# the setup both count per-request work on. usher's config on 127.0.0.1:17500 in front of the
# shared harness's 1-worker nginx upstream on 127.0.0.1:17501: /static/ is a 1 KiB file from
# memory, /cache/ is proxied and cached (the upstream allows an hour: after the first request
# every one is a hit), anything else is proxied.
#   rig_start NAME   $WORK (a new temp dir, with $WORK/proxy.toml) and the upstream running
#   rig_stop         stops the upstream and removes $WORK
HARNESS=$(cd ../shared/bench && pwd)
WORK=""

rig_start() {
  WORK=$(mktemp -d "/tmp/usher-$1.XXXXXX")
  export UP_DIR=$WORK/up UP_CPUS=${UP_CPUS:-1} UPSTREAM_PORT=17501 DOCROOT=$WORK/www
  BODY100=$(printf '0123456789%.0s' 1 2 3 4 5 6 7 8 9 10)
  export BODY100
  mkdir -p "$UP_DIR" "$DOCROOT/static"
  head -c 1024 /dev/urandom > "$DOCROOT/static/1k.bin"
  "$HARNESS/lib/upstream.sh" start
  cat > "$WORK/proxy.toml" <<CONF
[server]
http = "127.0.0.1:17500"
certs_dir = "$WORK/certs"
access_log = "text"

[[site]]
names = ["127.0.0.1"]
default = true
http_redirect = false        # else every plain request is answered with a redirect to https

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
