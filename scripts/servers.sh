#!/usr/bin/env bash
# servers.sh — the real servers idemlock's tests run against, on loopback.
#
#   scripts/servers.sh start [NAME...]  install what is missing, start all (or the NAMEs), wait until they answer
#   scripts/servers.sh stop [NAME...]   stop what this script started (by recorded pid)
#   scripts/servers.sh status           show each server; exit 1 unless all answer
#   scripts/servers.sh env              print export lines: eval "$(scripts/servers.sh env)"
#   scripts/servers.sh nodes NAME       one line per process of NAME: UNIT ADDR ROLE PEER (see below)
#   scripts/servers.sh pause NAME       SIGSTOP a server (its whole process group; fault tests)
#   scripts/servers.sh resume NAME      SIGCONT it again
#   scripts/servers.sh kill NAME        SIGKILL it (kill -9), keeping its data; `start NAME` brings it back
#   scripts/servers.sh restart NAME     stop it and start it again, waiting until it answers
#   scripts/servers.sh failover NAME    redis-sentinel: SENTINEL FAILOVER; redis-cluster-ha-N (a replica):
#                                       CLUSTER FAILOVER; returns once the new primary is in place
#
# NAME is a server, a topology, or one process (a unit) of a topology:
#
#   server / topology   units                              client ports (127.0.0.1, offset added)
#   redis               redis                              16379
#   redis-cluster       redis-cluster-17001..17003         17001-17003 (bus 27001-27003); 3 primaries
#   etcd                etcd                               12379 (peer 12380)
#   consul              consul                             http 18500 (-dev agent; server 18300,
#                                                          serf 18301/18302, grpc 18502)
#   memcached           memcached                          21211
#   etcd-cluster        etcd-cluster-1..3                  12391-12393 (peer 12394-12396)
#   consul-cluster      consul-cluster-1..3 (servers)      http 18511-18513, server 18311-18313,
#                       consul-cluster-client (agent)      serf 18321-18323; the client agent the
#                                                          library talks to: http 18514, serf 18324
#   redis-sentinel      redis-ha-1..3 (1 starts primary)   16381-16383
#                       sentinel-1..3                      26381-26383, master name "idemlock"
#   redis-cluster-ha    redis-cluster-ha-1..6              17011-17016 (bus 27011-27016);
#                                                          3 primaries with 1 replica each
#   memcached-cluster   memcached-cluster-1..3             21221-21223 (the client shards over them)
#   postgres            postgres                           15432 (PostgreSQL from Debian's packages)
#
# No port is a default one, so system servers can run beside these. Every
# port of every other agent protocol is moved or disabled: Consul's dns,
# https, grpc and grpc_tls (and serf_wan on the cluster) are off. `start`
# refuses a port it finds taken by a process it did not start.
#
# Topologies: the etcd cluster has 3 voting members (election timeout 1s).
# The Consul cluster is 3 servers in server mode (Raft on a persistent data
# dir, bootstrap_expect 3, raft_multiplier 1, session_ttl_min 1s) and a
# client agent joined to them. Redis Sentinel watches redis-ha-1..3 with
# quorum 2 (down-after 3s). redis-cluster-ha fails a primary over to its
# replica after cluster-node-timeout (3s). redis-cluster keeps its three
# replica-less primaries, so the tests that reshard or pause its nodes keep
# their behaviour. PostgreSQL runs as a non-root user (postgres when this
# script runs as root), trust auth on loopback TCP only, fsync off; its data
# dir is copied from a template made once by initdb (cached) on each fresh
# start and deleted on stop.
#
# `nodes NAME` prints, per unit: its name, its client address, its role now
# (leader/follower for etcd and the Consul servers, as the Consul client
# agent sees it; client for the Consul agent; primary/replica for Redis
# nodes; sentinel; node for everything else; down, paused or unknown when it
# does not answer) and PEER: the unit a replica replicates from or a
# Sentinel names as primary, else "-".
#
# IDEMLOCK_PORT_OFFSET (default 0) is added to every port: with a scratch
# folder of its own it runs a private set of servers beside the shared one
# (internal/testenv.Private does that for fault tests).
#
# Data, logs and pid files live in ${IDEMLOCK_SERVERS_DIR:-<repo>/.servers}.
# Consul (MPL-2.0 v1.14.11, built from source once) and the PostgreSQL
# template are cached in ${IDEMLOCK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/idemlock}.
#
# State: Redis runs without persistence, memcached and the Consul dev agent
# keep nothing, so a restart loses their data, as a real restart of such a
# server would (restarting a Redis primary before Sentinel failed it over
# therefore empties its replicas too). etcd, the Consul cluster and
# PostgreSQL keep their data across `restart` and kill + start, but `start`
# of a stopped server or topology begins empty. A stopped Redis Cluster is
# re-created on `start`. `start` of one unit of a running topology rejoins it
# with its data and waits until the whole topology is healthy again.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${IDEMLOCK_SERVERS_DIR:-$ROOT/.servers}
CACHE=${IDEMLOCK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/idemlock}
CONSUL_VERSION=v1.14.11
CONSUL_BIN=$CACHE/consul-$CONSUL_VERSION/consul
# Seconds to wait for one server, or one topology, to answer.
TIMEOUT=${IDEMLOCK_SERVERS_TIMEOUT:-60}

HOST=127.0.0.1
OFFSET=${IDEMLOCK_PORT_OFFSET:-0}
[[ $OFFSET =~ ^[0-9]+$ && $OFFSET -lt 20000 ]] || {
	printf 'servers.sh: error: IDEMLOCK_PORT_OFFSET=%s is not a number below 20000\n' "$OFFSET" >&2
	exit 2
}
REDIS_PORT=$((16379 + OFFSET))
CLUSTER_PORTS=($((17001 + OFFSET)) $((17002 + OFFSET)) $((17003 + OFFSET)))
ETCD_PORT=$((12379 + OFFSET))
ETCD_PEER_PORT=$((12380 + OFFSET))
CONSUL_HTTP=$((18500 + OFFSET))
CONSUL_SERVER=$((18300 + OFFSET))
CONSUL_SERF_LAN=$((18301 + OFFSET))
CONSUL_SERF_WAN=$((18302 + OFFSET))
CONSUL_GRPC=$((18502 + OFFSET))
MEMCACHED_PORT=$((21211 + OFFSET))
# Topologies: unit N (from 1) of each listens on BASE + N.
ETCD_CLUSTER_BASE=$((12390 + OFFSET))      # client; peer at +3
CONSUL_CLUSTER_HTTP_BASE=$((18510 + OFFSET)) # agent 4 is the client agent
CONSUL_CLUSTER_SERVER_BASE=$((18310 + OFFSET))
CONSUL_CLUSTER_SERF_BASE=$((18320 + OFFSET))
REDIS_HA_BASE=$((16380 + OFFSET))
SENTINEL_BASE=$((26380 + OFFSET))
SENTINEL_MASTER=idemlock
CLUSTER_HA_BASE=$((17010 + OFFSET)) # bus at +10000
MEMCACHED_CLUSTER_BASE=$((21220 + OFFSET))
POSTGRES_PORT=$((15432 + OFFSET))

NAMES=(redis redis-cluster etcd consul memcached
	etcd-cluster consul-cluster redis-sentinel redis-cluster-ha memcached-cluster postgres)

say() { printf 'servers.sh: %s\n' "$*" >&2; }
die() { printf 'servers.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
	sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

# ---------------------------------------------------------------- units
# A unit is one server process: redis, redis-cluster-1700N, etcd-cluster-2,
# sentinel-1, postgres, ...

# units NAME: the units a NAME stands for.
units() {
	case $1 in
	redis | etcd | consul | memcached | postgres) echo "$1" ;;
	redis-cluster) printf 'redis-cluster-%s\n' "${CLUSTER_PORTS[@]}" ;;
	redis-cluster-ha) printf 'redis-cluster-ha-%s\n' 1 2 3 4 5 6 ;;
	redis-cluster-ha-[1-6]) echo "$1" ;;
	redis-cluster-[0-9]*)
		[[ " ${CLUSTER_PORTS[*]} " == *" ${1#redis-cluster-} "* ]] || die "unknown cluster node '$1' (nodes: ${CLUSTER_PORTS[*]})"
		echo "$1"
		;;
	etcd-cluster) printf 'etcd-cluster-%s\n' 1 2 3 ;;
	consul-cluster) printf 'consul-cluster-%s\n' 1 2 3 client ;;
	redis-sentinel) printf '%s\n' redis-ha-1 redis-ha-2 redis-ha-3 sentinel-1 sentinel-2 sentinel-3 ;;
	memcached-cluster) printf 'memcached-cluster-%s\n' 1 2 3 ;;
	etcd-cluster-[1-3] | consul-cluster-[1-3] | consul-cluster-client | redis-ha-[1-3] | sentinel-[1-3] | memcached-cluster-[1-3]) echo "$1" ;;
	*) die "unknown server '$1' (want one of: ${NAMES[*]}, or one unit of a topology)" ;;
	esac
}

all_units() { for n in "${NAMES[@]}"; do units "$n"; done; }

# topology UNIT: the NAME a unit belongs to (the unit itself for a single server).
topology() {
	case $1 in
	redis-cluster-ha-*) echo redis-cluster-ha ;;
	redis-cluster-*) echo redis-cluster ;;
	etcd-cluster-*) echo etcd-cluster ;;
	consul-cluster-*) echo consul-cluster ;;
	redis-ha-* | sentinel-*) echo redis-sentinel ;;
	memcached-cluster-*) echo memcached-cluster ;;
	*) echo "$1" ;;
	esac
}

# idx UNIT: the number of a topology's unit (2 for etcd-cluster-2).
idx() { echo "${1##*-}"; }

# pg_bin: the bin folder of the newest PostgreSQL installed from Debian's
# packages (empty if none is).
find_pg_bin() {
	local d
	PG_BIN=
	d=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
	if [[ -n $d && -x $d/postgres ]]; then PG_BIN=$d; fi
}
pg_bin() { echo "$PG_BIN"; }

# binary UNIT: the command a unit runs.
binary() {
	case $1 in
	redis | redis-cluster-* | redis-ha-* | sentinel-*) echo redis-server ;;
	etcd | etcd-cluster-*) echo etcd ;;
	consul | consul-cluster-*) echo "$CONSUL_BIN" ;;
	memcached | memcached-cluster-*) echo memcached ;;
	postgres) echo "$(pg_bin)/postgres" ;;
	esac
}

# ports UNIT: every TCP port a unit listens on, the client port first.
ports() {
	local i
	case $1 in
	redis) echo "$REDIS_PORT" ;;
	redis-cluster-ha-*) i=$(idx "$1"); echo "$((CLUSTER_HA_BASE + i)) $((CLUSTER_HA_BASE + i + 10000))" ;;
	redis-cluster-*) local p=${1#redis-cluster-}; echo "$p $((p + 10000))" ;;
	etcd) echo "$ETCD_PORT $ETCD_PEER_PORT" ;;
	etcd-cluster-*) i=$(idx "$1"); echo "$((ETCD_CLUSTER_BASE + i)) $((ETCD_CLUSTER_BASE + 3 + i))" ;;
	consul) echo "$CONSUL_HTTP $CONSUL_SERVER $CONSUL_SERF_LAN $CONSUL_SERF_WAN $CONSUL_GRPC" ;;
	consul-cluster-client) echo "$((CONSUL_CLUSTER_HTTP_BASE + 4)) $((CONSUL_CLUSTER_SERF_BASE + 4))" ;;
	consul-cluster-*)
		i=$(idx "$1")
		echo "$((CONSUL_CLUSTER_HTTP_BASE + i)) $((CONSUL_CLUSTER_SERVER_BASE + i)) $((CONSUL_CLUSTER_SERF_BASE + i))"
		;;
	redis-ha-*) echo "$((REDIS_HA_BASE + $(idx "$1")))" ;;
	sentinel-*) echo "$((SENTINEL_BASE + $(idx "$1")))" ;;
	memcached) echo "$MEMCACHED_PORT" ;;
	memcached-cluster-*) echo "$((MEMCACHED_CLUSTER_BASE + $(idx "$1")))" ;;
	postgres) echo "$POSTGRES_PORT" ;;
	esac
}

# port UNIT: the unit's client port.
port() {
	local p
	p=$(ports "$1")
	echo "${p%% *}"
}

# unit_at NAME PORT: the unit of NAME whose client port is PORT (empty if none).
unit_at() {
	local u
	for u in $(units "$1"); do
		if [[ $(port "$u") == "$2" ]]; then
			echo "$u"
			return 0
		fi
	done
}

pidfile() { echo "$DIR/$1.pid"; }
logfile() { echo "$DIR/$1.log"; }

# exe_of BINARY: the resolved path of the executable a binary name runs
# (remembered: the checks below run it for every unit, often).
declare -A EXE_OF=()
exe_of() {
	local b
	if [[ -z ${EXE_OF[$1]:-} ]]; then
		b=$(command -v "$1" 2>/dev/null) || return 1
		EXE_OF[$1]=$(readlink -f "$b")
	fi
	echo "${EXE_OF[$1]}"
}

# find_binaries: look the binaries up once, in the main shell (the checks
# run in subshells, whose lookups would be forgotten).
find_binaries() {
	local b
	find_pg_bin
	for b in redis-server etcd memcached "$CONSUL_BIN" "$PG_BIN/postgres"; do
		exe_of "$b" >/dev/null || true
	done
}

# stat_field PID N: field N of /proc/PID/stat counted after the command
# name (1 state, 3 process group, 20 start time), read without a process.
stat_field() {
	local line f
	[[ -r /proc/$1/stat ]] || return 1
	read -r line <"/proc/$1/stat" 2>/dev/null || return 1
	read -r -a f <<<"${line##*) }"
	echo "${f[$(($2 - 1))]:-}"
}

# alive PID: the process exists and is not a zombie.
alive() {
	local state
	state=$(stat_field "$1" 1) || return 1
	[[ -n $state && $state != Z && $state != X ]]
}

stopped() { # PID is in stopped (SIGSTOP) state
	[[ $(stat_field "$1" 1) == T ]]
}

# starttime PID: when the process started (clock ticks since boot); with the
# pid it names one process for good, even after the pid is reused.
starttime() {
	stat_field "$1" 20
}

# signal SIG PID: send SIG to the process group PID leads (a unit launched
# by setsid leads its own: PostgreSQL's backends are in it), else to PID.
signal() {
	if [[ $(stat_field "$2" 3) == "$2" ]]; then
		kill "-$1" -- "-$2" 2>/dev/null
	else
		kill "-$1" "$2" 2>/dev/null
	fi
}

# ourpid UNIT: print the recorded pid if that process (same pid and start
# time) is alive and runs the unit's binary; a pid file that fails that test
# is stale and is removed.
ourpid() {
	local unit=$1 f pid started exe want
	f=$(pidfile "$unit")
	[[ -f $f ]] || return 1
	read -r pid started <"$f" || true
	if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" &&
		[[ -z $started || $(starttime "$pid") == "$started" ]]; then
		exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
		exe=${exe% (deleted)}
		want=$(exe_of "$(binary "$unit")" || true)
		if [[ -n $want && $exe == "$want" ]]; then
			echo "$pid"
			return 0
		fi
	fi
	say "$unit: stale pid file (pid ${pid:-?} is not running $(binary "$unit")), removing it"
	rm -f "$f"
	return 1
}

# listening PORT: something listens on TCP PORT (IPv4 or IPv6, any address).
listening() {
	local hex
	hex=$(printf '%04X' "$1")
	awk -v p=":$hex" 'NR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }' \
		/proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# ---------------------------------------------------------------- probes
# Each probe answers within a few seconds even if the server is paused.

rcli() { # PORT ARGS...: one redis-cli command with a short timeout
	local p=$1
	shift
	timeout 2 redis-cli -h "$HOST" -p "$p" "$@" 2>/dev/null | tr -d '\r'
}

probe_redis() { # PORT
	[[ $(rcli "$1" PING) == PONG ]]
}

probe_memcached() { # PORT
	# shellcheck disable=SC2016 # expanded by the inner bash
	timeout 3 bash -c '
		exec 3<>"/dev/tcp/$1/$2" || exit 1
		printf "version\r\n" >&3
		IFS= read -r line <&3 || exit 1
		[[ $line == VERSION* ]]' _ "$HOST" "$1" 2>/dev/null
}

probe_etcd() { # PORT
	ETCDCTL_API=3 timeout 5 etcdctl --endpoints "$HOST:$1" \
		--dial-timeout=2s --command-timeout=3s endpoint health >/dev/null 2>&1
}

# http_get PORT PATH: body of a GET on a Consul HTTP port.
http_get() {
	if command -v curl >/dev/null 2>&1; then
		curl -fsS --max-time 3 "http://$HOST:$1$2" 2>/dev/null
		return
	fi
	# shellcheck disable=SC2016 # expanded by the inner bash
	timeout 3 bash -c '
		exec 3<>"/dev/tcp/$1/$2" || exit 1
		printf "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" "$3" "$1" >&3
		IFS= read -r status <&3 || exit 1
		[[ $status == *" 200 "* ]] || exit 1
		while IFS= read -r line <&3 && [[ $line != $'"'"'\r'"'"' ]]; do :; done
		cat <&3' _ "$HOST" "$1" "$2" 2>/dev/null
}

# consul_leader PORT: the leader's server address ("127.0.0.1:18311") as
# the agent on HTTP port PORT knows it; fails if there is none.
consul_leader() {
	local leader
	leader=$(http_get "$1" /v1/status/leader) || return 1
	leader=${leader//\"/}
	[[ -n $leader ]] || return 1
	echo "$leader"
}

# A Consul agent answers once it has a leader and its own node is in the
# catalog (sessions cannot be created before that).
probe_consul() { # PORT NODE
	local node
	consul_leader "$1" >/dev/null || return 1
	node=$(http_get "$1" "/v1/catalog/node/$2") || return 1
	[[ $node == *'"Node":'* ]]
}

probe_postgres() {
	local b
	b=$(pg_bin)
	[[ -n $b ]] && timeout 3 "$b/pg_isready" -q -h "$HOST" -p "$POSTGRES_PORT" -t 2 >/dev/null 2>&1
}

probe() { # UNIT
	case $1 in
	redis | redis-cluster-* | redis-ha-* | sentinel-*) probe_redis "$(port "$1")" ;;
	etcd | etcd-cluster-*) probe_etcd "$(port "$1")" ;;
	consul) probe_consul "$CONSUL_HTTP" idemlock ;;
	consul-cluster-client) probe_consul "$(port "$1")" idemlock-client ;;
	consul-cluster-*) consul_leader "$(port "$1")" >/dev/null ;;
	memcached | memcached-cluster-*) probe_memcached "$(port "$1")" ;;
	postgres) probe_postgres ;;
	esac
}

# ---------------------------------------------------------------- install

as_root() {
	if [[ $(id -u) -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "need root or sudo to run: $*"
	fi
}

install_packages() {
	local missing=() cmd pkg
	for cmd in redis-server:redis-server redis-cli:redis-server memcached:memcached \
		etcd:etcd-server etcdctl:etcd-client; do
		pkg=${cmd#*:}
		cmd=${cmd%%:*}
		if ! command -v "$cmd" >/dev/null 2>&1 && [[ " ${missing[*]} " != *" $pkg "* ]]; then
			missing+=("$pkg")
		fi
	done
	command -v timeout >/dev/null 2>&1 || missing+=(coreutils)
	[[ -n $(pg_bin) ]] || missing+=(postgresql)
	if [[ $(id -u) -eq 0 ]] && ! command -v setpriv >/dev/null 2>&1; then
		missing+=(util-linux)
	fi
	[[ ${#missing[@]} -eq 0 ]] && return 0
	command -v apt-get >/dev/null 2>&1 ||
		die "missing packages ${missing[*]} and no apt-get to install them; install them by hand"
	say "installing ${missing[*]}"
	if [[ " ${missing[*]} " == *" postgresql "* ]]; then
		# The package would create and start a cluster of its own on the
		# default port; ours are made by this script.
		as_root mkdir -p /etc/postgresql-common/createcluster.d
		echo 'create_main_cluster = false' | as_root tee /etc/postgresql-common/createcluster.d/idemlock.conf >/dev/null
	fi
	local log=$DIR/apt.log
	if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >"$log" 2>&1; then
		tail -n 20 "$log" >&2
		die "apt-get update failed (log: $log)"
	fi
	if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
		"${missing[@]}" >>"$log" 2>&1; then
		tail -n 20 "$log" >&2
		die "apt-get install ${missing[*]} failed (log: $log)"
	fi
	for cmd in redis-server redis-cli memcached etcd etcdctl; do
		command -v "$cmd" >/dev/null 2>&1 || die "$cmd still missing after installing ${missing[*]}"
	done
	find_binaries
	[[ -n $(pg_bin) ]] || die "no /usr/lib/postgresql/*/bin/postgres after installing ${missing[*]}"
}

# consul_ok: the cached binary is there and is the version we build.
consul_ok() {
	is_consul "$CONSUL_BIN"
}

# is_consul BINARY: BINARY runs and says it is Consul $CONSUL_VERSION. (No
# `| head | grep -q` here: under pipefail the writer's SIGPIPE would fail it.)
is_consul() {
	local v
	[[ -x $1 ]] || return 1
	v=$("$1" version 2>/dev/null) || return 1
	[[ ${v%%$'\n'*} == "Consul $CONSUL_VERSION" ]]
}

# build_consul builds the MPL-2.0 Consul release from its Go module source,
# once; the binary is written under a temporary name and renamed into place,
# so an interrupted build never leaves a partial binary behind.
build_consul() {
	consul_ok && return 0
	local cdir
	cdir=$(dirname "$CONSUL_BIN")
	mkdir -p "$cdir"
	if command -v flock >/dev/null 2>&1; then
		exec 8>"$cdir/.build.lock"
		flock -w 1800 8 || die "timed out waiting for another Consul build ($cdir/.build.lock)"
		if consul_ok; then
			exec 8>&-
			return 0
		fi
	fi
	command -v go >/dev/null 2>&1 || die "go is needed to build Consul $CONSUL_VERSION and is not on PATH"
	say "building Consul $CONSUL_VERSION (MPL-2.0) from source into $CONSUL_BIN; this takes a few minutes"
	local log=$cdir/build.log tmp src json rc
	rm -f "$CONSUL_BIN".tmp.* # left by a build that was killed
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/idemlock-consul.XXXXXX")
	BUILD_TMP=$tmp
	trap 'chmod -R u+w "$BUILD_TMP" 2>/dev/null; rm -rf "$BUILD_TMP" "$CONSUL_BIN.tmp.$$"' EXIT
	# errexit must not be off inside the subshell, so its status is not
	# tested with || (which would disable errexit there) but read after.
	set +e
	(
		set -euo pipefail
		cd "$tmp"
		json=$(go mod download -json "github.com/hashicorp/consul@$CONSUL_VERSION")
		src=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
		[[ -n $src && -d $src ]] || { echo "no module Dir in: $json"; exit 1; }
		cp -R "$src" "$tmp/src"
		chmod -R u+w "$tmp/src"
		cd "$tmp/src"
		go mod edit \
			-dropreplace=github.com/hashicorp/consul/api \
			-dropreplace=github.com/hashicorp/consul/sdk \
			-dropreplace=github.com/hashicorp/consul/proto-public
		go build -mod=mod -o "$CONSUL_BIN.tmp.$$" .
		is_consul "$CONSUL_BIN.tmp.$$" || { echo "the built binary does not report Consul $CONSUL_VERSION"; exit 1; }
		mv -f "$CONSUL_BIN.tmp.$$" "$CONSUL_BIN"
	) >"$log" 2>&1
	rc=$?
	set -e
	rm -f "$CONSUL_BIN.tmp.$$"
	chmod -R u+w "$tmp" 2>/dev/null || true
	rm -rf "$tmp"
	trap - EXIT
	if [[ $rc -ne 0 ]]; then
		tail -n 30 "$log" >&2
		die "Consul $CONSUL_VERSION build failed (exit $rc; full log: $log)"
	fi
	consul_ok || die "Consul build finished but $CONSUL_BIN does not report $CONSUL_VERSION"
	exec 8>&-
	say "built $CONSUL_BIN"
}

# ---------------------------------------------------------------- postgres
# PostgreSQL refuses to run as root: as root it runs as the postgres user
# the Debian package creates, with its data dir in a folder that user can
# reach (a test's scratch folder is private to root).

pg_user() {
	if [[ $(id -u) -eq 0 ]]; then echo postgres; else id -un; fi
}

# AS_PG: the command prefix that runs a command as the PostgreSQL user
# (setpriv execs it: no extra process stands between the pid and postgres).
AS_PG=()
[[ $(id -u) -eq 0 ]] && AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups)

pg_data() {
	if [[ $(id -u) -eq 0 ]]; then
		echo "${TMPDIR:-/tmp}/idemlock-postgres-$(printf '%s' "$DIR" | cksum | cut -d' ' -f1)-$OFFSET"
	else
		echo "$DIR/postgres/data"
	fi
}

# pg_template: a data dir made by initdb once per PostgreSQL version and
# cached; each fresh start copies it (much faster than initdb).
pg_template() {
	local b major tdir tmp
	b=$(pg_bin)
	major=$(basename "$(dirname "$b")")
	tdir=$CACHE/postgres-$major
	if [[ ! -f $tdir/template/PG_VERSION ]]; then
		mkdir -p "$tdir"
		if command -v flock >/dev/null 2>&1; then
			exec 7>"$tdir/.lock"
			flock -w 300 7 || die "timed out waiting for another initdb ($tdir/.lock)"
		fi
		if [[ ! -f $tdir/template/PG_VERSION ]]; then
			say "postgres: initdb of the template data dir in $tdir/template"
			tmp=$(mktemp -d "${TMPDIR:-/tmp}/idemlock-initdb.XXXXXX")
			[[ $(id -u) -eq 0 ]] && chown "$(pg_user)" "$tmp"
			if ! "${AS_PG[@]}" "$b/initdb" -D "$tmp/data" -U postgres -A trust -E UTF8 --locale=C \
				--no-sync --no-instructions >"$tdir/initdb.log" 2>&1; then
				rm -rf "$tmp"
				tail -n 20 "$tdir/initdb.log" >&2
				die "initdb failed (log: $tdir/initdb.log)"
			fi
			rm -rf "$tdir/template.tmp"
			cp -a "$tmp/data" "$tdir/template.tmp"
			rm -rf "$tmp"
			mv "$tdir/template.tmp" "$tdir/template"
		fi
		exec 7>&-
	fi
	echo "$tdir/template"
}

# pg_fresh: a new data dir copied from the template.
pg_fresh() {
	local data template
	data=$(pg_data)
	template=$(pg_template)
	rm -rf "$data"
	mkdir -p "$(dirname "$data")"
	cp -a "$template" "$data"
	[[ $(id -u) -eq 0 ]] && chown -R "$(pg_user)" "$data"
	chmod 700 "$data"
}

# ---------------------------------------------------------------- configs

write_redis_conf() { # UNIT PORT [EXTRA-LINE...]
	local unit=$1 p=$2 d=$DIR/$1
	shift 2
	mkdir -p "$d"
	{
		echo "bind $HOST"
		echo "port $p"
		echo "protected-mode yes"
		echo "daemonize no"
		echo "dir \"$d\""
		echo 'logfile ""'
		echo 'save ""'
		echo "appendonly no"
		# A replica syncs at once instead of waiting for more replicas.
		echo "repl-diskless-sync-delay 0"
		local line
		for line in "$@"; do echo "$line"; done
	} >"$d/redis.conf"
	rm -f "$d/dump.rdb"
}

write_consul_conf() {
	mkdir -p "$DIR/consul"
	cat >"$DIR/consul/consul.hcl" <<EOF
node_name = "idemlock"
session_ttl_min = "1s"
disable_update_check = true
log_level = "INFO"
ports {
  http     = $CONSUL_HTTP
  https    = -1
  dns      = -1
  grpc     = $CONSUL_GRPC
  grpc_tls = -1
  serf_lan = $CONSUL_SERF_LAN
  serf_wan = $CONSUL_SERF_WAN
  server   = $CONSUL_SERVER
}
EOF
}

# write_consul_cluster_conf UNIT: a server (consul-cluster-1..3) or the
# client agent (consul-cluster-client) of the Consul cluster.
write_consul_cluster_conf() {
	local unit=$1 d=$DIR/$1 i join="" server=false
	mkdir -p "$d"
	for i in 1 2 3; do join+="${join:+, }\"$HOST:$((CONSUL_CLUSTER_SERF_BASE + i))\""; done
	{
		if [[ $unit == consul-cluster-client ]]; then
			echo 'node_name = "idemlock-client"'
			i=4
		else
			i=$(idx "$unit")
			server=true
			echo "node_name = \"idemlock-server-$i\""
			echo 'bootstrap_expect = 3'
			echo 'performance { raft_multiplier = 1 }'
		fi
		cat <<EOF
server = $server
datacenter = "idemlock"
data_dir = "$d/data"
bind_addr = "$HOST"
client_addr = "$HOST"
retry_join = [$join]
retry_interval = "1s"
session_ttl_min = "1s"
disable_update_check = true
log_level = "INFO"
ports {
  http     = $((CONSUL_CLUSTER_HTTP_BASE + i))
  https    = -1
  dns      = -1
  grpc     = -1
  grpc_tls = -1
  serf_lan = $((CONSUL_CLUSTER_SERF_BASE + i))
  serf_wan = -1
EOF
		[[ $server == true ]] && echo "  server   = $((CONSUL_CLUSTER_SERVER_BASE + i))"
		echo '}'
	} >"$d/consul.hcl"
}

# write_sentinel_conf UNIT MASTER-PORT: a Sentinel watching the primary on
# MASTER-PORT. (Sentinel rewrites this file as it learns the topology.)
write_sentinel_conf() {
	local unit=$1 d=$DIR/$1
	mkdir -p "$d"
	cat >"$d/sentinel.conf" <<EOF
bind $HOST
port $(port "$unit")
daemonize no
dir "$d"
logfile ""
sentinel monitor $SENTINEL_MASTER $HOST $2 2
sentinel down-after-milliseconds $SENTINEL_MASTER 3000
sentinel failover-timeout $SENTINEL_MASTER 10000
sentinel parallel-syncs $SENTINEL_MASTER 1
EOF
}

# sentinel_master: the client port of the primary the running Sentinels
# name (the first that answers), or nothing.
sentinel_master() {
	local s out
	for s in $(units redis-sentinel); do
		[[ $s == sentinel-* ]] || continue
		[[ -f $(pidfile "$s") ]] || continue
		out=$(rcli "$(port "$s")" SENTINEL get-master-addr-by-name "$SENTINEL_MASTER") || continue
		out=$(printf '%s\n' "$out" | sed -n 2p)
		if [[ -n $out ]]; then
			echo "$out"
			return 0
		fi
	done
}

# ha_master: the client port redis-ha nodes replicate from: the Sentinels'
# primary, else a running node that says it is a master, else redis-ha-1's.
ha_master() {
	local m u
	m=$(sentinel_master)
	if [[ -z $m ]]; then
		for u in redis-ha-1 redis-ha-2 redis-ha-3; do
			[[ -f $(pidfile "$u") ]] || continue
			if [[ $(rcli "$(port "$u")" ROLE | head -n 1) == master ]]; then
				m=$(port "$u")
				break
			fi
		done
	fi
	echo "${m:-$(port redis-ha-1)}"
}

# ---------------------------------------------------------------- start/stop

# launch UNIT ARGV...: start a unit in its own session, record its pid.
launch() {
	local unit=$1 log pid p
	shift
	for p in $(ports "$unit"); do
		if listening "$p"; then
			die "port $p (for $unit) is already in use by a process this script did not start; stop it or free the port, then run start again"
		fi
	done
	log=$(logfile "$unit")
	printf -- '--- %s starting %s\n' "$(date '+%F %T')" "$*" >>"$log"
	if command -v setsid >/dev/null 2>&1; then
		setsid "$@" </dev/null >>"$log" 2>&1 7>&- 8>&- 9>&- &
	else
		"$@" </dev/null >>"$log" 2>&1 7>&- 8>&- 9>&- &
	fi
	pid=$!
	echo "$pid $(starttime "$pid")" >"$(pidfile "$unit")"
}

# wait_ready UNIT: poll until the unit answers; fail with its log tail if it
# exits or does not answer within $TIMEOUT seconds.
wait_ready() {
	local unit=$1 pid deadline
	read -r pid _ <"$(pidfile "$unit")"
	deadline=$((SECONDS + TIMEOUT))
	while :; do
		if ! alive "$pid"; then
			# wait gives the status of a server this run launched (127:
			# not our child, one a previous run started).
			local rc=0 status=""
			wait "$pid" 2>/dev/null || rc=$?
			if [[ $rc != 127 ]]; then status=" (exit status $rc)"; fi
			rm -f "$(pidfile "$unit")"
			fail_log "$unit" "$unit exited at start$status"
		fi
		probe "$unit" && return 0
		if ((SECONDS >= deadline)); then
			kill_pid "$unit" "$pid"
			fail_log "$unit" "$unit (pid $pid) did not answer within ${TIMEOUT}s (IDEMLOCK_SERVERS_TIMEOUT); stopped it"
		fi
		sleep 0.2
	done
}

fail_log() { # UNIT MESSAGE
	local log
	log=$(logfile "$1")
	{
		echo "----- last lines of $log -----"
		tail -n 25 "$log" 2>/dev/null || true
		echo "-----"
	} >&2
	die "$2"
}

# launch_unit UNIT KEEP: launch one unit unless it already runs (a paused
# one is resumed); KEEP=1 keeps its data from a previous run (restart),
# KEEP=0 starts it empty. It does not wait: see start_units.
launch_unit() {
	local unit=$1 keep=${2:-0} pid i
	if pid=$(ourpid "$unit"); then
		if stopped "$pid"; then
			say "$unit: pid $pid was paused, resuming it"
			signal CONT "$pid"
		fi
		return 0
	fi
	case $unit in
	redis)
		write_redis_conf redis "$REDIS_PORT"
		launch redis redis-server "$DIR/redis/redis.conf"
		;;
	redis-cluster-ha-*)
		write_redis_conf "$unit" "$(port "$unit")" "cluster-enabled yes" \
			"cluster-config-file \"$DIR/$unit/nodes.conf\"" "cluster-node-timeout 3000"
		[[ $keep == 1 ]] || rm -f "$DIR/$unit/nodes.conf"
		launch "$unit" redis-server "$DIR/$unit/redis.conf"
		;;
	redis-cluster-*)
		write_redis_conf "$unit" "${unit#redis-cluster-}" "cluster-enabled yes" \
			"cluster-config-file \"$DIR/$unit/nodes.conf\"" "cluster-node-timeout 5000"
		[[ $keep == 1 ]] || rm -f "$DIR/$unit/nodes.conf"
		launch "$unit" redis-server "$DIR/$unit/redis.conf"
		;;
	redis-ha-*)
		local m extra=()
		m=$(ha_master)
		[[ $m == "$(port "$unit")" ]] || extra=("replicaof $HOST $m")
		write_redis_conf "$unit" "$(port "$unit")" "${extra[@]}"
		launch "$unit" redis-server "$DIR/$unit/redis.conf"
		;;
	sentinel-*)
		if [[ $keep != 1 || ! -f $DIR/$unit/sentinel.conf ]]; then
			write_sentinel_conf "$unit" "$(ha_master)"
		fi
		launch "$unit" redis-server "$DIR/$unit/sentinel.conf" --sentinel
		;;
	etcd | etcd-cluster-*)
		[[ $keep == 1 ]] || rm -rf "$DIR/$unit/data"
		mkdir -p "$DIR/$unit"
		local arch
		arch=$(uname -m)
		[[ $arch == aarch64 ]] && export ETCD_UNSUPPORTED_ARCH=arm64
		if [[ $unit == etcd ]]; then
			launch etcd etcd --name idemlock --data-dir "$DIR/etcd/data" \
				--listen-client-urls "http://$HOST:$ETCD_PORT" \
				--advertise-client-urls "http://$HOST:$ETCD_PORT" \
				--listen-peer-urls "http://$HOST:$ETCD_PEER_PORT" \
				--initial-advertise-peer-urls "http://$HOST:$ETCD_PEER_PORT" \
				--initial-cluster "idemlock=http://$HOST:$ETCD_PEER_PORT" \
				--logger zap --log-outputs stderr
		else
			local members="" client peer
			for i in 1 2 3; do members+="${members:+,}m$i=http://$HOST:$((ETCD_CLUSTER_BASE + 3 + i))"; done
			i=$(idx "$unit")
			client=$((ETCD_CLUSTER_BASE + i))
			peer=$((ETCD_CLUSTER_BASE + 3 + i))
			launch "$unit" etcd --name "m$i" --data-dir "$DIR/$unit/data" \
				--listen-client-urls "http://$HOST:$client" \
				--advertise-client-urls "http://$HOST:$client" \
				--listen-peer-urls "http://$HOST:$peer" \
				--initial-advertise-peer-urls "http://$HOST:$peer" \
				--initial-cluster "$members" \
				--initial-cluster-state new --initial-cluster-token "idemlock-$OFFSET" \
				--heartbeat-interval 100 --election-timeout 1000 \
				--logger zap --log-outputs stderr
		fi
		;;
	consul)
		build_consul
		write_consul_conf
		launch consul "$CONSUL_BIN" agent -dev -client "$HOST" -bind "$HOST" \
			-config-file "$DIR/consul/consul.hcl"
		;;
	consul-cluster-*)
		build_consul
		[[ $keep == 1 ]] || rm -rf "$DIR/$unit/data"
		write_consul_cluster_conf "$unit"
		launch "$unit" "$CONSUL_BIN" agent -config-file "$DIR/$unit/consul.hcl"
		;;
	memcached | memcached-cluster-*)
		local user=()
		[[ $(id -u) -eq 0 ]] && user=(-u root)
		launch "$unit" memcached -l "$HOST" -p "$(port "$unit")" -U 0 -m 64 "${user[@]}"
		;;
	postgres)
		[[ $keep == 1 && -f $(pg_data)/PG_VERSION ]] || pg_fresh
		rm -f "$(pg_data)/postmaster.pid" # left by a kill -9; its processes are gone (see cmd_kill)
		launch postgres "${AS_PG[@]}" "$(pg_bin)/postgres" -D "$(pg_data)" \
			-c listen_addresses="$HOST" -c port="$POSTGRES_PORT" -c unix_socket_directories= \
			-c fsync=off -c max_connections=300 -c log_min_messages=warning
		;;
	esac
	STARTED_AT[$unit]=$SECONDS
}

# STARTED_AT[UNIT]: when this run launched UNIT (unset for a reused one).
declare -A STARTED_AT=()

# start_units KEEP UNIT...: launch the units that are not running, all at
# once, then wait until each answers.
start_units() {
	local keep=$1 u t0=$SECONDS
	shift
	for u in "$@"; do launch_unit "$u" "$keep"; done
	for u in "$@"; do
		wait_ready "$u"
		if [[ -n ${STARTED_AT[$u]:-} ]]; then
			say "$u: started (pid $(ourpid "$u"), $((SECONDS - t0))s)"
		else
			say "$u: already running (pid $(ourpid "$u")), reused"
		fi
	done
}

# stop_unit UNIT [PURGE]: stop a unit; PURGE=1 also deletes data that
# lives outside $DIR (PostgreSQL's, as root).
stop_unit() {
	local unit=$1 purge=${2:-0} pid
	if pid=$(ourpid "$unit"); then
		kill_pid "$unit" "$pid"
		say "$unit: stopped (pid $pid)"
	fi
	if [[ $unit == postgres && $purge == 1 ]]; then
		rm -rf "$(pg_data)"
	fi
}

# kill_pid UNIT PID: the unit's stop signal (SIGTERM; SIGINT, the fast
# shutdown, for PostgreSQL) after SIGCONT (in case it is paused), SIGKILL if
# it lingers, and forget its pid file.
kill_pid() {
	local unit=$1 pid=$2 deadline sig=TERM
	[[ $unit == postgres ]] && sig=INT
	signal CONT "$pid" || true
	kill "-$sig" "$pid" 2>/dev/null || true
	deadline=$((SECONDS + 15))
	while alive "$pid"; do
		if ((SECONDS >= deadline)); then
			say "$unit: pid $pid ignored SIG$sig for 15s, killing it"
			signal KILL "$pid" || true
			deadline=$((SECONDS + 5))
			while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
			break
		fi
		sleep 0.1
	done
	alive "$pid" && die "$unit: pid $pid would not exit"
	rm -f "$(pidfile "$unit")"
}

# ---------------------------------------------------------------- topologies

cluster_field() { # PORT FIELD
	rcli "$1" CLUSTER INFO | sed -n "s/^$2://p"
}

# cluster_ok NAME: every node of the Redis Cluster NAME sees all nodes and
# all slots served; in redis-cluster-ha every primary has a connected
# replica whose link is up.
cluster_ok() {
	local name=$1 u n info nodes p
	n=$(units "$name" | wc -l)
	for u in $(units "$name"); do
		info=$(rcli "$(port "$u")" CLUSTER INFO)
		[[ $info == *cluster_state:ok* && $info == *"cluster_known_nodes:$n"* &&
			$info == *cluster_slots_ok:16384* ]] || return 1
	done
	[[ $name == redis-cluster-ha ]] || return 0
	nodes=$(rcli "$(port redis-cluster-ha-1)" CLUSTER NODES)
	[[ $(printf '%s\n' "$nodes" | awk '$3 ~ /master/ && $3 !~ /fail/ && $8 == "connected" && NF > 8' | wc -l) == 3 ]] || return 1
	[[ $(printf '%s\n' "$nodes" | awk '$3 ~ /slave/ && $3 !~ /fail/ && $8 == "connected"' | wc -l) == 3 ]] || return 1
	for p in $(printf '%s\n' "$nodes" | awk '$3 ~ /slave/ { sub(/@.*/, "", $2); sub(/.*:/, "", $2); print $2 }'); do
		[[ $(rcli "$p" INFO replication) == *master_link_status:up* ]] || return 1
	done
}

# sentinel_ok: every Sentinel names the same primary, knows the two other
# Sentinels and two replicas, and the primary has two replicas online.
sentinel_ok() {
	local s m="" got info
	for s in sentinel-1 sentinel-2 sentinel-3; do
		got=$(rcli "$(port "$s")" SENTINEL get-master-addr-by-name "$SENTINEL_MASTER" | sed -n 2p)
		[[ -n $got ]] || return 1
		[[ -z $m || $got == "$m" ]] || return 1
		m=$got
		info=$(rcli "$(port "$s")" SENTINEL master "$SENTINEL_MASTER" | paste -sd' ')
		[[ " $info " == *" flags master "* ]] || return 1
		[[ " $info " == *" num-other-sentinels 2 "* ]] || return 1
		[[ " $info " == *" num-slaves 2 "* ]] || return 1
	done
	[[ $(rcli "$m" ROLE | head -n 1) == master ]] || return 1
	[[ $(rcli "$m" INFO replication | grep -c '^slave[0-9]*:.*state=online') == 2 ]]
}

# consul_cluster_ok: the client agent knows a leader and three Raft peers,
# and every server names the same leader.
consul_cluster_ok() {
	local leader peers i
	probe consul-cluster-client || return 1
	leader=$(consul_leader "$(port consul-cluster-client)") || return 1
	peers=$(http_get "$(port consul-cluster-client)" /v1/status/peers) || return 1
	[[ $(printf '%s' "$peers" | tr ',' '\n' | grep -c "$HOST:") == 3 ]] || return 1
	for i in 1 2 3; do
		[[ $(consul_leader "$(port "consul-cluster-$i")") == "$leader" ]] || return 1
	done
}

# topology_ok NAME: the topology is whole and healthy (every unit answers).
topology_ok() {
	local u
	case $1 in
	redis-cluster | redis-cluster-ha) cluster_ok "$1" ;;
	redis-sentinel) sentinel_ok ;;
	consul-cluster) consul_cluster_ok ;;
	*) for u in $(units "$1"); do probe "$u" || return 1; done ;;
	esac
}

# wait_topology NAME: poll until topology_ok NAME, or fail after $TIMEOUT.
wait_topology() {
	local name=$1 deadline=$((SECONDS + TIMEOUT))
	until topology_ok "$name"; do
		if ((SECONDS >= deadline)); then
			echo "--- $name nodes:" >&2
			cmd_nodes "$name" >&2 || true
			die "$name did not become healthy within ${TIMEOUT}s (IDEMLOCK_SERVERS_TIMEOUT); logs in $DIR; try: $0 restart $name"
		fi
		sleep 0.2
	done
}

# start_redis_cluster NAME KEEP: the nodes of a Redis Cluster, formed into
# one cluster with all slots (redis-cluster-ha: 3 primaries, 1 replica each).
start_redis_cluster() {
	local name=$1 keep=${2:-0} u running=0
	for u in $(units "$name"); do
		ourpid "$u" >/dev/null && running=1
	done
	# Nodes of a cluster that is gone entirely start fresh and are formed
	# again; a node rejoining running peers keeps its nodes.conf.
	[[ $running == 1 ]] && keep=1
	# shellcheck disable=SC2046 # unit names have no spaces
	start_units "$keep" $(units "$name")
	cluster_ok "$name" && return 0
	local slots=0 n
	for u in $(units "$name"); do
		n=$(cluster_field "$(port "$u")" cluster_slots_assigned)
		slots=$((slots + ${n:-0}))
	done
	if [[ $slots == 0 ]]; then
		local addrs=() replicas=0 first
		for u in $(units "$name"); do addrs+=("$HOST:$(port "$u")"); done
		[[ $name == redis-cluster-ha ]] && replicas=1
		first=$(units "$name" | head -n 1)
		say "$name: creating cluster of ${addrs[*]}"
		if ! timeout 60 redis-cli --cluster create "${addrs[@]}" --cluster-replicas "$replicas" --cluster-yes \
			>>"$(logfile "$first")" 2>&1 </dev/null; then
			fail_log "$first" "redis-cli --cluster create failed"
		fi
	fi
	wait_topology "$name"
	say "$name: cluster_state ok on all nodes"
}

# start_topology NAME KEEP: every unit of a topology, then wait until it is
# healthy. A topology with a running unit keeps its data.
start_topology() {
	local name=$1 keep=${2:-0} u running=0
	for u in $(units "$name"); do
		ourpid "$u" >/dev/null && running=1
	done
	[[ $running == 1 ]] && keep=1
	if [[ $name == redis-sentinel ]]; then
		# The primary and replicas first: a Sentinel's configuration names
		# the primary, which is there by then.
		start_units "$keep" redis-ha-1 redis-ha-2 redis-ha-3
		start_units "$keep" sentinel-1 sentinel-2 sentinel-3
	else
		# shellcheck disable=SC2046 # unit names have no spaces
		start_units "$keep" $(units "$name")
	fi
	wait_topology "$name"
	[[ $name == "$(units "$name")" ]] || say "$name: healthy"
}

start_name() { # NAME KEEP
	local topo
	topo=$(topology "$1")
	case $1 in
	redis-cluster | redis-cluster-ha) start_redis_cluster "$1" "${2:-0}" ;;
	etcd-cluster | consul-cluster | redis-sentinel | memcached-cluster) start_topology "$1" "${2:-0}" ;;
	*)
		if [[ $topo == "$1" ]]; then
			start_units "${2:-0}" "$1"
		else
			# One unit of a topology rejoins it with its data.
			start_units 1 "$1"
			say "$1: waiting for $topo to be healthy"
			wait_topology "$topo"
			say "$topo: healthy"
		fi
		;;
	esac
}

# ---------------------------------------------------------------- roles

# etcd_role PORT: leader or follower, from the member's own status.
etcd_role() {
	local out id leader
	out=$(ETCDCTL_API=3 timeout 3 etcdctl --endpoints "$HOST:$1" --dial-timeout=1s \
		--command-timeout=2s endpoint status -w fields 2>/dev/null) || return 1
	id=$(printf '%s\n' "$out" | sed -n 's/^"MemberID" : //p')
	leader=$(printf '%s\n' "$out" | sed -n 's/^"Leader" : //p')
	[[ -n $id && -n $leader ]] || return 1
	if [[ $id == "$leader" ]]; then echo leader; else echo follower; fi
}

# role UNIT: "ROLE PEER" of a running unit (see the header).
role() {
	local unit=$1 p out r peer=-
	p=$(port "$unit")
	case $unit in
	etcd-cluster-*)
		r=$(etcd_role "$p") || r=unknown
		;;
	consul-cluster-client) r=client ;;
	consul-cluster-*)
		if out=$(consul_leader "$(port consul-cluster-client)"); then
			if [[ $out == "$HOST:$((CONSUL_CLUSTER_SERVER_BASE + $(idx "$unit")))" ]]; then r=leader; else r=follower; fi
		else
			r=unknown
		fi
		;;
	redis-ha-* | redis-cluster-* | redis)
		out=$(rcli "$p" ROLE) || true
		case $(printf '%s\n' "$out" | head -n 1) in
		master) r=primary ;;
		slave)
			r=replica
			peer=$(unit_at "$(topology "$unit")" "$(printf '%s\n' "$out" | sed -n 3p)")
			;;
		*) r=unknown ;;
		esac
		;;
	sentinel-*)
		out=$(rcli "$p" SENTINEL get-master-addr-by-name "$SENTINEL_MASTER" | sed -n 2p) || true
		if [[ -n $out ]]; then
			r=sentinel
			peer=$(unit_at redis-sentinel "$out")
		else
			r=unknown
		fi
		;;
	*) if probe "$unit"; then r=node; else r=unknown; fi ;;
	esac
	echo "$r ${peer:--}"
}

cmd_nodes() { # NAME
	local u pid r
	for u in $(units "$1"); do
		if ! pid=$(ourpid "$u" 2>/dev/null); then
			r="down -"
		elif stopped "$pid"; then
			r="paused -"
		else
			r=$(role "$u")
		fi
		echo "$u $HOST:$(port "$u") $r"
	done
}

# ---------------------------------------------------------------- commands

lock() {
	mkdir -p "$DIR"
	if command -v flock >/dev/null 2>&1; then
		exec 9>"$DIR/.lock"
		flock -w 1800 9 || die "another servers.sh holds $DIR/.lock"
	fi
}

cmd_start() { # [NAME...]
	local names=("$@")
	[[ ${#names[@]} -gt 0 ]] || names=("${NAMES[@]}")
	lock
	install_packages
	local t0=$SECONDS n u p
	# Fail on a taken port, and build Consul, before anything starts.
	for n in "${names[@]}"; do
		for u in $(units "$n"); do
			ourpid "$u" >/dev/null && continue
			for p in $(ports "$u"); do
				listening "$p" && die "port $p (for $u) is already in use by a process this script did not start; stop it or free the port, then run start again"
			done
			[[ $u == consul* ]] && build_consul
			[[ $u == postgres ]] && pg_template >/dev/null
		done
	done
	if [[ ${#names[@]} -eq 1 ]]; then
		start_name "${names[0]}" 0
	else
		# Servers and topologies start side by side; each waits for its own.
		local pids=() failed=()
		for n in "${names[@]}"; do
			start_name "$n" 0 &
			pids+=($!)
		done
		local i
		for i in "${!pids[@]}"; do
			wait "${pids[$i]}" || failed+=("${names[$i]}")
		done
		[[ ${#failed[@]} -eq 0 ]] || die "${failed[*]} did not start (see above)"
	fi
	say "${names[*]} answer ($((SECONDS - t0))s); dir $DIR"
}

cmd_stop() { # [NAME...]
	local names=("$@") n u
	[[ ${#names[@]} -gt 0 ]] || names=("${NAMES[@]}")
	lock
	for n in "${names[@]}"; do
		for u in $(units "$n"); do stop_unit "$u" 1; done
	done
}

cmd_status() {
	local u pid bad=0 state
	for u in $(all_units); do
		if [[ ! -f $(pidfile "$u") ]]; then
			state="not running"
			bad=1
		elif ! pid=$(ourpid "$u" 2>/dev/null); then
			state="not running (stale pid file removed)"
			bad=1
		elif stopped "$pid"; then
			state="paused (pid $pid)"
			bad=1
		elif probe "$u"; then
			state="running (pid $pid), answers on $(port "$u")"
		else
			state="running (pid $pid), NOT answering"
			bad=1
		fi
		printf '%-22s %s\n' "$u" "$state"
	done
	return "$bad"
}

# addrs NAME: the client addresses of NAME's units matching PATTERN, comma-separated.
addrs() { # NAME PATTERN
	local u out=()
	for u in $(units "$1"); do
		# shellcheck disable=SC2053 # $2 is a glob on purpose
		[[ $u == $2 ]] && out+=("$HOST:$(port "$u")")
	done
	local IFS=,
	echo "${out[*]}"
}

cmd_env() {
	cat <<EOF
export IDEMLOCK_REDIS_ADDR=$HOST:$REDIS_PORT
export IDEMLOCK_REDIS_CLUSTER_ADDRS=$(addrs redis-cluster '*')
export IDEMLOCK_ETCD_ENDPOINTS=$HOST:$ETCD_PORT
export IDEMLOCK_CONSUL_ADDR=$HOST:$CONSUL_HTTP
export IDEMLOCK_MEMCACHED_ADDR=$HOST:$MEMCACHED_PORT
export IDEMLOCK_ETCD_CLUSTER_ENDPOINTS=$(addrs etcd-cluster '*')
export IDEMLOCK_CONSUL_CLUSTER_ADDR=$HOST:$(port consul-cluster-client)
export IDEMLOCK_REDIS_SENTINEL_ADDRS=$(addrs redis-sentinel 'sentinel-*')
export IDEMLOCK_REDIS_SENTINEL_MASTER=$SENTINEL_MASTER
export IDEMLOCK_REDIS_CLUSTER_HA_ADDRS=$(addrs redis-cluster-ha '*')
export IDEMLOCK_MEMCACHED_CLUSTER_ADDRS=$(addrs memcached-cluster '*')
export IDEMLOCK_POSTGRES_URL='postgres://postgres@$HOST:$POSTGRES_PORT/postgres?sslmode=disable'
EOF
}

cmd_signal() { # SIG VERB NAME
	local sig=$1 verb=$2 name=$3 u pid
	lock
	for u in $(units "$name"); do
		pid=$(ourpid "$u") || die "$u is not running (start it with: $0 start)"
		signal "$sig" "$pid"
		say "$u: $verb (pid $pid)"
	done
}

# cmd_kill NAME: SIGKILL each unit's process group and wait until every
# process of it is gone; the data stays for `start`.
cmd_kill() {
	local u pid deadline
	lock
	for u in $(units "$1"); do
		pid=$(ourpid "$u") || die "$u is not running (start it with: $0 start)"
		signal KILL "$pid" || true
		deadline=$((SECONDS + 10))
		while alive "$pid" || kill -0 -- "-$pid" 2>/dev/null; do
			((SECONDS < deadline)) || die "$u: pid $pid (or its process group) survived SIGKILL for 10s"
			sleep 0.05
		done
		rm -f "$(pidfile "$u")"
		say "$u: killed (pid $pid)"
	done
}

cmd_restart() {
	local name=$1 u
	lock
	install_packages
	for u in $(units "$name"); do stop_unit "$u"; done
	start_name "$name" 1
}

# cmd_failover NAME: a manual failover that returns once done.
cmd_failover() {
	local name=$1 old m deadline s
	lock
	deadline=$((SECONDS + TIMEOUT))
	case $name in
	redis-sentinel)
		old=$(sentinel_master)
		[[ -n $old ]] || die "no Sentinel of redis-sentinel answers"
		for s in sentinel-1 sentinel-2 sentinel-3; do
			[[ $(rcli "$(port "$s")" SENTINEL failover "$SENTINEL_MASTER") == OK ]] && break
		done
		until m=$(sentinel_master) && [[ -n $m && $m != "$old" && $(rcli "$m" ROLE | head -n 1) == master ]]; do
			((SECONDS < deadline)) || die "redis-sentinel: no new primary within ${TIMEOUT}s"
			sleep 0.1
		done
		say "redis-sentinel: primary moved from $(unit_at redis-sentinel "$old") to $(unit_at redis-sentinel "$m")"
		wait_topology redis-sentinel
		;;
	redis-cluster-ha-[1-6])
		local p
		p=$(port "$name")
		[[ $(rcli "$p" ROLE | head -n 1) == slave ]] || die "$name is not a replica; CLUSTER FAILOVER is sent to the replica to promote"
		[[ $(rcli "$p" CLUSTER FAILOVER) == OK ]] || die "$name refused CLUSTER FAILOVER"
		until [[ $(rcli "$p" ROLE | head -n 1) == master ]]; do
			((SECONDS < deadline)) || die "$name was not promoted within ${TIMEOUT}s"
			sleep 0.1
		done
		say "$name: promoted to primary"
		wait_topology redis-cluster-ha
		;;
	*) die "failover works on redis-sentinel or a replica redis-cluster-ha-N, not '$name'" ;;
	esac
}

main() {
	[[ $# -ge 1 ]] || usage
	find_binaries
	local cmd=$1
	shift
	case $cmd in
	start | stop)
		local n
		for n in "$@"; do units "$n" >/dev/null; done # dies on an unknown name
		"cmd_$cmd" "$@"
		;;
	status | env)
		[[ $# -eq 0 ]] || usage
		"cmd_$cmd"
		;;
	nodes | pause | resume | kill | restart | failover)
		[[ $# -eq 1 ]] || usage
		units "$1" >/dev/null # dies on an unknown name
		case $cmd in
		nodes) cmd_nodes "$1" ;;
		pause) cmd_signal STOP paused "$1" ;;
		resume) cmd_signal CONT resumed "$1" ;;
		kill) cmd_kill "$1" ;;
		restart) cmd_restart "$1" ;;
		failover) cmd_failover "$1" ;;
		esac
		;;
	-h | --help | help) usage ;;
	*) usage ;;
	esac
}

main "$@"
