#!/usr/bin/env bash
# servers.sh — the real servers idemlock's tests run against, on loopback.
#
#   scripts/servers.sh start [NAME...]  install what is missing, start all (or the NAMEs), wait until they answer
#   scripts/servers.sh stop [NAME...]   stop what this script started (by recorded pid)
#   scripts/servers.sh status           show each server; exit 1 unless all answer
#   scripts/servers.sh env              print export lines: eval "$(scripts/servers.sh env)"
#   scripts/servers.sh nodes NAME       one line per process of NAME: UNIT ADDR ROLE PEER (see below)
#   scripts/servers.sh pause NAME       SIGSTOP a server (with its child processes; fault tests)
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
# dir, bootstrap_expect 3, raft_multiplier 1, autopilot min_quorum 3,
# session_ttl_min 1s) and a
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
# Byte semantics for the RESP reader below (read -N counts characters).
export LC_ALL=C

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
SENTINEL_MASTER=idemlock

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
# sentinel-1, postgres, ... The tables below are built once, without a
# subshell: this script runs often during fault tests, on busy machines
# where every fork counts.

declare -A UNITS=() # NAME -> its units, space-separated
declare -A TOPO=()  # UNIT -> the NAME it belongs to
declare -A KIND=()  # UNIT -> the program it runs: redis-server etcd consul memcached postgres
declare -A PORTS=() # UNIT -> every TCP port it listens on, the client port first
declare -A PORT=()  # UNIT -> its client port

def_unit() { # NAME UNIT KIND PORT...
	local name=$1 unit=$2
	UNITS[$name]+="${UNITS[$name]:+ }$unit"
	TOPO[$unit]=$name
	KIND[$unit]=$3
	shift 3
	PORTS[$unit]="$*"
	PORT[$unit]=$1
}

def_units() {
	local o=$OFFSET i p
	def_unit redis redis redis-server $((16379 + o))
	for p in $((17001 + o)) $((17002 + o)) $((17003 + o)); do
		def_unit redis-cluster "redis-cluster-$p" redis-server "$p" $((p + 10000))
	done
	def_unit etcd etcd etcd $((12379 + o)) $((12380 + o))
	# http, server, serf lan, serf wan, grpc
	def_unit consul consul consul $((18500 + o)) $((18300 + o)) $((18301 + o)) $((18302 + o)) $((18502 + o))
	def_unit memcached memcached memcached $((21211 + o))
	for i in 1 2 3; do # client, peer
		def_unit etcd-cluster "etcd-cluster-$i" etcd $((12390 + o + i)) $((12393 + o + i))
	done
	for i in 1 2 3; do # http, server, serf lan
		def_unit consul-cluster "consul-cluster-$i" consul $((18510 + o + i)) $((18310 + o + i)) $((18320 + o + i))
	done
	def_unit consul-cluster consul-cluster-client consul $((18514 + o)) $((18324 + o))
	for i in 1 2 3; do def_unit redis-sentinel "redis-ha-$i" redis-server $((16380 + o + i)); done
	for i in 1 2 3; do def_unit redis-sentinel "sentinel-$i" redis-server $((26380 + o + i)); done
	for i in 1 2 3 4 5 6; do
		def_unit redis-cluster-ha "redis-cluster-ha-$i" redis-server $((17010 + o + i)) $((27010 + o + i))
	done
	for i in 1 2 3; do def_unit memcached-cluster "memcached-cluster-$i" memcached $((21220 + o + i)); done
	def_unit postgres postgres postgres $((15432 + o))
}
def_units

# units NAME: the units a NAME (a server, a topology or one unit) stands for.
units() {
	if [[ -n ${UNITS[$1]:-} ]]; then
		echo "${UNITS[$1]}"
	elif [[ -n ${TOPO[$1]:-} ]]; then
		echo "$1"
	else
		die "unknown server '$1' (want one of: ${NAMES[*]}, or one unit of a topology)"
	fi
}

# unit_at NAME PORT: set UNIT_AT to the unit of NAME whose client port is PORT.
unit_at() {
	local u
	UNIT_AT=
	for u in ${UNITS[$1]}; do
		if [[ ${PORT[$u]} == "$2" ]]; then
			UNIT_AT=$u
			return 0
		fi
	done
	return 1
}

pidfile() { echo "$DIR/$1.pid"; }
logfile() { echo "$DIR/$1.log"; }

# which_bin NAME: set REPLY to the path of command NAME (as command -v
# finds it, without a subshell); 1 if there is none.
which_bin() {
	local d
	REPLY=
	if [[ $1 == /* ]]; then
		[[ -x $1 ]] && REPLY=$1
		[[ -n $REPLY ]]
		return
	fi
	local IFS=:
	for d in $PATH; do
		if [[ -x $d/$1 && ! -d $d/$1 ]]; then
			REPLY=$d/$1
			return 0
		fi
	done
	return 1
}

# find_binaries sets EXE[KIND], the executable each kind of unit runs, and
# PG_BIN, the bin folder of the newest PostgreSQL of Debian's packages.
declare -A EXE=()
PG_BIN=
find_binaries() {
	local d v best=0 k
	PG_BIN=
	for d in /usr/lib/postgresql/*/bin; do
		v=${d#/usr/lib/postgresql/}
		v=${v%%[!0-9]*}
		if [[ -n $v && -x $d/postgres ]] && ((v > best)); then
			best=$v
			PG_BIN=$d
		fi
	done
	for k in redis-server etcd memcached; do
		if which_bin "$k"; then EXE[$k]=$REPLY; else EXE[$k]=; fi
	done
	EXE[consul]=$CONSUL_BIN
	EXE[postgres]=${PG_BIN:+$PG_BIN/postgres}
}

# proc_stat PID: set STAT_STATE and STAT_START (clock ticks since boot)
# from /proc/PID/stat; 1 if there is no such process.
proc_stat() {
	local line f
	{ read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
	read -r -a f <<<"${line##*) }"
	STAT_STATE=${f[0]}
	STAT_START=${f[19]}
}

# alive PID: the process exists and is not a zombie.
alive() { proc_stat "$1" && [[ $STAT_STATE != [ZX] ]]; }

# stopped PID: the process is stopped (SIGSTOP).
stopped() { proc_stat "$1" && [[ $STAT_STATE == T ]]; }

# family PID: set FAMILY to PID and every process descending from it.
# (PostgreSQL's backends each start a session of their own, so neither the
# process group nor the session of the postmaster holds them.)
family() {
	local f line pid ppid i=0
	local -A kids=()
	for f in /proc/[0-9]*/stat; do
		{ read -r line <"$f"; } 2>/dev/null || continue
		pid=${f#/proc/}
		pid=${pid%/stat}
		line=${line##*) }
		ppid=${line#* }
		ppid=${ppid%% *}
		kids[$ppid]+=" $pid"
	done
	FAMILY=("$1")
	while ((i < ${#FAMILY[@]})); do
		# shellcheck disable=SC2206 # a list of pids
		FAMILY+=(${kids[${FAMILY[$i]}]:-})
		i=$((i + 1))
	done
}

# signal SIG PID: send SIG to PID and every process descending from it:
# pausing or killing a server pauses or kills all of it.
signal() {
	family "$2"
	kill "-$1" "${FAMILY[@]}" 2>/dev/null
}

# ourpid UNIT: set OURPID to the recorded pid if that process (same pid
# and start time) is alive and runs the unit's executable; a pid file that
# fails that test is stale and is removed.
ourpid() {
	local unit=$1 f pid started want
	OURPID=
	f=$DIR/$unit.pid
	[[ -f $f ]] || return 1
	read -r pid started <"$f" || true
	if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" && [[ -z $started || $STAT_START == "$started" ]]; then
		want=${EXE[${KIND[$unit]}]:-}
		# -ef follows /proc's link to the running executable; a binary
		# upgraded since shows as "PATH (deleted)".
		if [[ -n $want ]] && { [[ /proc/$pid/exe -ef $want ]] ||
			[[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$(readlink -f "$want") (deleted)" ]]; }; then
			OURPID=$pid
			return 0
		fi
	fi
	say "$unit: stale pid file (pid ${pid:-?} is not running ${want:-${KIND[$unit]}}), removing it"
	rm -f "$f"
	return 1
}

# listening PORT...: something listens on one of the TCP PORTs (IPv4 or
# IPv6, any address); TAKEN is set to that port. One awk over
# /proc/net/tcp: bash's read would take seconds on a busy machine.
listening() {
	local p h want=" "
	for p in "$@"; do
		printf -v h '%04X' "$p"
		want+="$h "
	done
	TAKEN=$(awk -v want="$want" 'FNR > 1 && $4 == "0A" { h = substr($2, length($2) - 3); if (index(want, " " h " ")) { print h; exit } }' \
		/proc/net/tcp /proc/net/tcp6 2>/dev/null)
	[[ -n $TAKEN ]] || return 1
	TAKEN=$((16#$TAKEN))
}

# ---------------------------------------------------------------- talking to servers
# Plain bash over /dev/tcp, with timeouts: a paused server (SIGSTOP) still
# accepts connections but answers nothing, so every read gives up in 2 s.

# redis PORT ARG...: one command to the Redis or Sentinel on PORT; sets
# REDIS_OUT to the reply as redis-cli prints it raw (an element a line, \r
# removed); 1 on an error reply, a timeout or no server.
redis() {
	local p=$1 fd req arg ok=0
	shift
	REDIS_OUT=
	{ exec {fd}<>"/dev/tcp/$HOST/$p"; } 2>/dev/null || return 1
	req="*$#"$'\r\n'
	for arg in "$@"; do req+="\$${#arg}"$'\r\n'"$arg"$'\r\n'; done
	if { printf '%s' "$req" >&"$fd"; } 2>/dev/null && resp_read "$fd"; then ok=1; fi
	exec {fd}>&-
	REDIS_OUT=${REDIS_OUT//$'\r'/}
	REDIS_OUT=${REDIS_OUT%$'\n'}
	[[ $ok == 1 ]]
}

# resp_read FD: read one RESP value from FD, appending it to REDIS_OUT.
resp_read() {
	local fd=$1 line n i data
	IFS= read -r -t 2 line <&"$fd" || return 1
	line=${line%$'\r'}
	case $line in
	'+'* | ':'*) REDIS_OUT+=${line:1}$'\n' ;;
	'-'*)
		REDIS_OUT+=${line:1}$'\n'
		return 1
		;;
	'$-1' | '*-1') ;;
	'$'*)
		n=${line:1}
		IFS= read -r -t 2 -N "$((n + 2))" data <&"$fd" || return 1
		REDIS_OUT+=${data:0:n}$'\n'
		;;
	'*'*)
		n=${line:1}
		for ((i = 0; i < n; i++)); do resp_read "$fd" || return 1; done
		;;
	*) return 1 ;;
	esac
}

# first_line TEXT: set FIRST to the first line of TEXT.
first_line() { FIRST=${1%%$'\n'*}; }

# line N TEXT: set LINE to line N (from 1) of TEXT, or empty.
line() {
	local a
	mapfile -t a <<<"$2"
	LINE=${a[$(($1 - 1))]:-}
}

# http PORT METHOD PATH [BODY]: one HTTP/1.0 request; sets HTTP_BODY; 0 on
# a 200 answer.
http() {
	local fd status line body="" ok=0 data=${4:-}
	HTTP_BODY=
	{ exec {fd}<>"/dev/tcp/$HOST/$1"; } 2>/dev/null || return 1
	if { printf '%s %s HTTP/1.0\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
		"$2" "$3" "$HOST" "${#data}" "$data" >&"$fd"; } 2>/dev/null &&
		IFS= read -r -t 3 status <&"$fd"; then
		while IFS= read -r -t 3 line <&"$fd" && [[ $line != $'\r' && -n $line ]]; do :; done
		line=
		while IFS= read -r -t 3 line <&"$fd" || [[ -n $line ]]; do
			body+=$line$'\n'
			line=
		done
		[[ $status == *" 200 "* ]] && ok=1
	fi
	exec {fd}>&-
	HTTP_BODY=${body%$'\n'}
	[[ $ok == 1 ]]
}

probe_redis() { # PORT
	redis "$1" PING && [[ $REDIS_OUT == PONG ]]
}

probe_memcached() { # PORT
	local fd line=""
	{ exec {fd}<>"/dev/tcp/$HOST/$1"; } 2>/dev/null || return 1
	if { printf 'version\r\n' >&"$fd"; } 2>/dev/null; then
		IFS= read -r -t 2 line <&"$fd" || true
	fi
	exec {fd}>&-
	[[ $line == VERSION* ]]
}

# An etcd member answers /health once it has a leader and can serve.
probe_etcd() { # PORT
	http "$1" GET /health && [[ $HTTP_BODY == *'"health":"true"'* ]]
}

# consul_leader PORT: set LEADER to the leader's server address
# ("127.0.0.1:18311") as the agent on HTTP port PORT knows it; 1 if none.
consul_leader() {
	LEADER=
	http "$1" GET /v1/status/leader || return 1
	LEADER=${HTTP_BODY//\"/}
	[[ -n $LEADER ]]
}

# A Consul agent answers once it has a leader and its own node is in the
# catalog (sessions cannot be created before that).
probe_consul() { # PORT NODE
	consul_leader "$1" || return 1
	http "$1" GET "/v1/catalog/node/$2" && [[ $HTTP_BODY == *'"Node":'* ]]
}

probe_postgres() {
	[[ -n $PG_BIN ]] && timeout 3 "$PG_BIN/pg_isready" -q -h "$HOST" -p "${PORT[postgres]}" -t 2 >/dev/null 2>&1
}

probe() { # UNIT
	local u=$1
	case ${KIND[$u]} in
	redis-server) probe_redis "${PORT[$u]}" ;;
	etcd) probe_etcd "${PORT[$u]}" ;;
	consul)
		case $u in
		consul) probe_consul "${PORT[$u]}" idemlock ;;
		consul-cluster-client) probe_consul "${PORT[$u]}" idemlock-client ;;
		*) consul_leader "${PORT[$u]}" ;;
		esac
		;;
	memcached) probe_memcached "${PORT[$u]}" ;;
	postgres) probe_postgres ;;
	esac
}

# ---------------------------------------------------------------- install

as_root() {
	if [[ $EUID -eq 0 ]]; then
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
		etcd:etcd-server; do
		pkg=${cmd#*:}
		cmd=${cmd%%:*}
		if ! command -v "$cmd" >/dev/null 2>&1 && [[ " ${missing[*]} " != *" $pkg "* ]]; then
			missing+=("$pkg")
		fi
	done
	command -v timeout >/dev/null 2>&1 || missing+=(coreutils)
	[[ -n $PG_BIN ]] || missing+=(postgresql)
	if [[ $EUID -eq 0 ]] && ! command -v setpriv >/dev/null 2>&1; then
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
	for cmd in redis-server redis-cli memcached etcd; do
		command -v "$cmd" >/dev/null 2>&1 || die "$cmd still missing after installing ${missing[*]}"
	done
	find_binaries
	[[ -n $PG_BIN ]] || die "no /usr/lib/postgresql/*/bin/postgres after installing ${missing[*]}"
}

# consul_ok: the cached binary is there and is the version we build
# (checked once per run: starting Consul to ask takes a while).
CONSUL_CHECKED=0
consul_ok() {
	[[ $CONSUL_CHECKED == 1 ]] && return 0
	is_consul "$CONSUL_BIN" || return 1
	CONSUL_CHECKED=1
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

# AS_PG: the command prefix that runs a command as the PostgreSQL user
# (setpriv execs it: no extra process stands between the pid and postgres).
AS_PG=()
if [[ $EUID -eq 0 ]]; then AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups); fi

# pg_data: set PG_DATA, the data dir of this set's PostgreSQL.
pg_data() {
	if [[ $EUID -eq 0 ]]; then
		local sum
		sum=$(printf '%s' "$DIR" | cksum)
		PG_DATA=${TMPDIR:-/tmp}/idemlock-postgres-${sum%% *}-$OFFSET
	else
		PG_DATA=$DIR/postgres/data
	fi
}

# pg_template: set PG_TEMPLATE to a data dir made by initdb once per
# PostgreSQL version and cached; each fresh start copies it (much faster
# than initdb).
pg_template() {
	local major tdir tmp
	major=${PG_BIN%/bin}
	major=${major##*/}
	tdir=$CACHE/postgres-$major
	PG_TEMPLATE=$tdir/template
	[[ -f $PG_TEMPLATE/PG_VERSION ]] && return 0
	mkdir -p "$tdir"
	if command -v flock >/dev/null 2>&1; then
		exec 7>"$tdir/.lock"
		flock -w 300 7 || die "timed out waiting for another initdb ($tdir/.lock)"
	fi
	if [[ ! -f $PG_TEMPLATE/PG_VERSION ]]; then
		say "postgres: initdb of the template data dir $PG_TEMPLATE"
		tmp=$(mktemp -d "${TMPDIR:-/tmp}/idemlock-initdb.XXXXXX")
		if [[ $EUID -eq 0 ]]; then chown postgres "$tmp"; fi
		if ! "${AS_PG[@]}" "$PG_BIN/initdb" -D "$tmp/data" -U postgres -A trust -E UTF8 --locale=C \
			--no-sync --no-instructions >"$tdir/initdb.log" 2>&1; then
			rm -rf "$tmp"
			tail -n 20 "$tdir/initdb.log" >&2
			die "initdb failed (log: $tdir/initdb.log)"
		fi
		rm -rf "$tdir/template.tmp"
		cp -a "$tmp/data" "$tdir/template.tmp"
		rm -rf "$tmp"
		mv "$tdir/template.tmp" "$PG_TEMPLATE"
	fi
	exec 7>&-
}

# pg_fresh: a new data dir copied from the template.
pg_fresh() {
	pg_data
	pg_template
	rm -rf "$PG_DATA"
	mkdir -p "${PG_DATA%/*}"
	cp -a "$PG_TEMPLATE" "$PG_DATA"
	if [[ $EUID -eq 0 ]]; then chown -R postgres "$PG_DATA"; fi
	chmod 700 "$PG_DATA"
}


# ---------------------------------------------------------------- configs

# ports_of UNIT: set PP to the unit's ports as an array.
ports_of() { read -r -a PP <<<"${PORTS[$1]}"; }

write_redis_conf() { # UNIT [EXTRA-LINE...]
	local unit=$1 d=$DIR/$1 line
	shift
	mkdir -p "$d"
	{
		echo "bind $HOST"
		echo "port ${PORT[$unit]}"
		echo "protected-mode yes"
		echo "daemonize no"
		echo "dir \"$d\""
		echo 'logfile ""'
		echo 'save ""'
		echo "appendonly no"
		# A replica syncs at once instead of waiting for more replicas.
		echo "repl-diskless-sync-delay 0"
		for line in "$@"; do echo "$line"; done
	} >"$d/redis.conf"
	rm -f "$d/dump.rdb"
}

write_consul_conf() {
	ports_of consul
	mkdir -p "$DIR/consul"
	cat >"$DIR/consul/consul.hcl" <<EOF
node_name = "idemlock"
session_ttl_min = "1s"
disable_update_check = true
log_level = "INFO"
ports {
  http     = ${PP[0]}
  https    = -1
  dns      = -1
  grpc     = ${PP[4]}
  grpc_tls = -1
  serf_lan = ${PP[2]}
  serf_wan = ${PP[3]}
  server   = ${PP[1]}
}
EOF
}

# write_consul_cluster_conf UNIT: a server (consul-cluster-1..3) or the
# client agent (consul-cluster-client) of the Consul cluster.
write_consul_cluster_conf() {
	local unit=$1 d=$DIR/$1 i join=""
	mkdir -p "$d"
	for i in 1 2 3; do
		ports_of "consul-cluster-$i"
		join+="${join:+, }\"$HOST:${PP[2]}\""
	done
	ports_of "$unit"
	{
		if [[ $unit == consul-cluster-client ]]; then
			echo 'node_name = "idemlock-client"'
			echo 'server = false'
		else
			echo "node_name = \"idemlock-server-${unit##*-}\""
			echo 'server = true'
			echo 'bootstrap_expect = 3'
			echo 'performance { raft_multiplier = 1 }'
			# Autopilot would prune a server dead for a few seconds from
			# the Raft configuration; back, it is a non-voter until it is
			# re-added, and a second leader kill then leaves no quorum.
			# Three-server production clusters keep min_quorum at 3.
			echo 'autopilot { min_quorum = 3 }'
		fi
		cat <<EOF
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
  http     = ${PP[0]}
  https    = -1
  dns      = -1
  grpc     = -1
  grpc_tls = -1
  serf_wan = -1
EOF
		if [[ $unit == consul-cluster-client ]]; then
			echo "  serf_lan = ${PP[1]}"
		else
			echo "  server   = ${PP[1]}"
			echo "  serf_lan = ${PP[2]}"
		fi
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
port ${PORT[$unit]}
daemonize no
dir "$d"
logfile ""
sentinel monitor $SENTINEL_MASTER $HOST $2 2
sentinel down-after-milliseconds $SENTINEL_MASTER 3000
sentinel failover-timeout $SENTINEL_MASTER 10000
sentinel parallel-syncs $SENTINEL_MASTER 1
EOF
}

# sentinel_master: set MASTER to the client port of the primary the
# running Sentinels name (the first that answers); 1 if none answers.
sentinel_master() {
	local s
	MASTER=
	for s in sentinel-1 sentinel-2 sentinel-3; do
		[[ -f $DIR/$s.pid ]] || continue
		if redis "${PORT[$s]}" SENTINEL get-master-addr-by-name "$SENTINEL_MASTER"; then
			line 2 "$REDIS_OUT"
			MASTER=$LINE
			[[ -n $MASTER ]] && return 0
		fi
	done
	return 1
}

# ha_master: set MASTER to the client port redis-ha nodes replicate from:
# the Sentinels' primary, else a running node that says it is a master,
# else redis-ha-1's.
ha_master() {
	local u
	sentinel_master && return 0
	for u in redis-ha-1 redis-ha-2 redis-ha-3; do
		[[ -f $DIR/$u.pid ]] || continue
		if redis "${PORT[$u]}" ROLE && first_line "$REDIS_OUT" && [[ $FIRST == master ]]; then
			MASTER=${PORT[$u]}
			return 0
		fi
	done
	MASTER=${PORT[redis-ha-1]}
}

# ---------------------------------------------------------------- start/stop

# launch UNIT ARGV...: start a unit in its own session, record its pid.
launch() {
	local unit=$1 log pid p
	shift
	# shellcheck disable=SC2086 # a list of ports
	if listening ${PORTS[$unit]}; then
		die "port $TAKEN (for $unit) is already in use by a process this script did not start; stop it or free the port, then run start again"
	fi
	log=$(logfile "$unit")
	printf -- '--- %(%F %T)T starting %s\n' -1 "$*" >>"$log"
	if command -v setsid >/dev/null 2>&1; then
		setsid "$@" </dev/null >>"$log" 2>&1 7>&- 8>&- 9>&- &
	else
		"$@" </dev/null >>"$log" 2>&1 7>&- 8>&- 9>&- &
	fi
	pid=$!
	proc_stat "$pid" || STAT_START=
	echo "$pid $STAT_START" >"$DIR/$unit.pid"
}

# wait_ready UNIT: poll until the unit answers; fail with its log tail if it
# exits or does not answer within $TIMEOUT seconds.
wait_ready() {
	local unit=$1 pid deadline
	read -r pid _ <"$DIR/$unit.pid"
	deadline=$((SECONDS + TIMEOUT))
	while :; do
		if ! alive "$pid"; then
			# wait gives the status of a server this run launched (127:
			# not our child, one a previous run started).
			local rc=0 status=""
			wait "$pid" 2>/dev/null || rc=$?
			if [[ $rc != 127 ]]; then status=" (exit status $rc)"; fi
			rm -f "$DIR/$unit.pid"
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

# STARTED[UNIT]: set when this run launched UNIT (not for a reused one).
declare -A STARTED=()

# launch_unit UNIT KEEP: launch one unit unless it already runs (a paused
# one is resumed); KEEP=1 keeps its data from a previous run (restart),
# KEEP=0 starts it empty. It does not wait: see start_units.
launch_unit() {
	local unit=$1 keep=${2:-0} i
	if ourpid "$unit"; then
		if stopped "$OURPID"; then
			say "$unit: pid $OURPID was paused, resuming it"
			signal CONT "$OURPID"
		fi
		return 0
	fi
	case $unit in
	redis)
		write_redis_conf redis
		launch redis redis-server "$DIR/redis/redis.conf"
		;;
	redis-cluster-*)
		local timeout=5000
		[[ $unit == redis-cluster-ha-* ]] && timeout=3000
		write_redis_conf "$unit" "cluster-enabled yes" \
			"cluster-config-file \"$DIR/$unit/nodes.conf\"" "cluster-node-timeout $timeout"
		[[ $keep == 1 ]] || rm -f "$DIR/$unit/nodes.conf"
		launch "$unit" redis-server "$DIR/$unit/redis.conf"
		;;
	redis-ha-*)
		ha_master
		if [[ $MASTER == "${PORT[$unit]}" ]]; then
			write_redis_conf "$unit"
		else
			write_redis_conf "$unit" "replicaof $HOST $MASTER"
		fi
		launch "$unit" redis-server "$DIR/$unit/redis.conf"
		;;
	sentinel-*)
		if [[ $keep != 1 || ! -f $DIR/$unit/sentinel.conf ]]; then
			ha_master
			write_sentinel_conf "$unit" "$MASTER"
		fi
		launch "$unit" redis-server "$DIR/$unit/sentinel.conf" --sentinel
		;;
	etcd | etcd-cluster-*)
		[[ $keep == 1 ]] || rm -rf "$DIR/$unit/data"
		mkdir -p "$DIR/$unit"
		[[ ${HOSTTYPE:-} == aarch64 ]] && export ETCD_UNSUPPORTED_ARCH=arm64
		ports_of "$unit"
		local name=idemlock members="" client=${PP[0]} peer=${PP[1]} extra=()
		if [[ $unit == etcd ]]; then
			members="idemlock=http://$HOST:$peer"
		else
			name=m${unit##*-}
			for i in 1 2 3; do
				ports_of "etcd-cluster-$i"
				members+="${members:+,}m$i=http://$HOST:${PP[1]}"
			done
			extra=(--initial-cluster-state new --initial-cluster-token "idemlock-$OFFSET"
				--heartbeat-interval 100 --election-timeout 1000)
		fi
		launch "$unit" etcd --name "$name" --data-dir "$DIR/$unit/data" \
			--listen-client-urls "http://$HOST:$client" \
			--advertise-client-urls "http://$HOST:$client" \
			--listen-peer-urls "http://$HOST:$peer" \
			--initial-advertise-peer-urls "http://$HOST:$peer" \
			--initial-cluster "$members" "${extra[@]}" \
			--logger zap --log-outputs stderr
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
		[[ $EUID -eq 0 ]] && user=(-u root)
		launch "$unit" memcached -l "$HOST" -p "${PORT[$unit]}" -U 0 -m 64 "${user[@]}"
		;;
	postgres)
		pg_data
		[[ $keep == 1 && -f $PG_DATA/PG_VERSION ]] || pg_fresh
		rm -f "$PG_DATA/postmaster.pid" # left by a kill -9; its processes are gone (see cmd_kill)
		launch postgres "${AS_PG[@]}" "$PG_BIN/postgres" -D "$PG_DATA" \
			-c listen_addresses="$HOST" -c port="${PORT[postgres]}" -c unix_socket_directories= \
			-c fsync=off -c max_connections=300 -c log_min_messages=warning
		;;
	esac
	STARTED[$unit]=1
}

# start_units KEEP UNIT...: launch the units that are not running, all at
# once, then wait until each answers.
start_units() {
	local keep=$1 u t0=$SECONDS
	shift
	for u in "$@"; do launch_unit "$u" "$keep"; done
	for u in "$@"; do
		wait_ready "$u"
		ourpid "$u" || true
		if [[ -n ${STARTED[$u]:-} ]]; then
			say "$u: started (pid $OURPID, $((SECONDS - t0))s)"
		else
			say "$u: already running (pid $OURPID), reused"
		fi
	done
}

# stop_unit UNIT [PURGE]: stop a unit; PURGE=1 also deletes data that
# lives outside $DIR (PostgreSQL's, as root).
stop_unit() {
	local unit=$1 purge=${2:-0}
	if ourpid "$unit"; then
		local pid=$OURPID
		kill_pid "$unit" "$pid"
		say "$unit: stopped (pid $pid)"
	fi
	if [[ $unit == postgres && $purge == 1 ]]; then
		pg_data
		rm -rf "$PG_DATA"
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
	rm -f "$DIR/$unit.pid"
}

# ---------------------------------------------------------------- topologies

# cluster_ok NAME: every node of the Redis Cluster NAME sees all nodes and
# all slots served; in redis-cluster-ha every primary has a connected
# replica whose link is up.
cluster_ok() {
	local name=$1 u n=0 primaries=0 replicas=0 addr flags link slots p
	for u in ${UNITS[$name]}; do n=$((n + 1)); done
	for u in ${UNITS[$name]}; do
		redis "${PORT[$u]}" CLUSTER INFO || return 1
		[[ $REDIS_OUT == *cluster_state:ok* && $REDIS_OUT == *"cluster_known_nodes:$n"$'\n'* &&
			$REDIS_OUT == *cluster_slots_ok:16384* ]] || return 1
	done
	[[ $name == redis-cluster-ha ]] || return 0
	redis "${PORT[redis-cluster-ha-1]}" CLUSTER NODES || return 1
	local replica_ports=()
	while read -r _ addr flags _ _ _ _ link slots; do
		[[ -n $addr ]] || continue
		[[ $flags != *fail* && $link == connected ]] || return 1
		case $flags in
		*master*) [[ -n $slots ]] && primaries=$((primaries + 1)) ;;
		*slave*)
			replicas=$((replicas + 1))
			p=${addr%@*}
			replica_ports+=("${p##*:}")
			;;
		esac
	done <<<"$REDIS_OUT"
	[[ $primaries == 3 && $replicas == 3 ]] || return 1
	for p in "${replica_ports[@]}"; do
		redis "$p" INFO replication && [[ $REDIS_OUT == *master_link_status:up* ]] || return 1
	done
}

# sentinel_ok: every Sentinel names the same primary, knows the two other
# Sentinels and two replicas, and the primary has two replicas online.
sentinel_ok() {
	local s m="" info n=0 l
	for s in sentinel-1 sentinel-2 sentinel-3; do
		redis "${PORT[$s]}" SENTINEL get-master-addr-by-name "$SENTINEL_MASTER" || return 1
		line 2 "$REDIS_OUT"
		[[ -n $LINE && (-z $m || $LINE == "$m") ]] || return 1
		m=$LINE
		redis "${PORT[$s]}" SENTINEL master "$SENTINEL_MASTER" || return 1
		info=" ${REDIS_OUT//$'\n'/ } "
		[[ $info == *" flags master "* && $info == *" num-other-sentinels 2 "* &&
			$info == *" num-slaves 2 "* ]] || return 1
	done
	redis "$m" ROLE && first_line "$REDIS_OUT" && [[ $FIRST == master ]] || return 1
	redis "$m" INFO replication || return 1
	while read -r l; do
		[[ $l == slave[0-9]*:*state=online* ]] && n=$((n + 1))
	done <<<"$REDIS_OUT"
	[[ $n == 2 ]]
}

# consul_cluster_ok: the client agent knows a leader and three Raft
# voters, and every server names the same leader.
consul_cluster_ok() {
	local leader i voters
	probe consul-cluster-client || return 1
	leader=$LEADER
	http "${PORT[consul-cluster-client]}" GET /v1/operator/raft/configuration || return 1
	voters=$(grep -o '"Voter":true' <<<"$HTTP_BODY" | wc -l)
	[[ $voters == 3 ]] || return 1
	for i in 1 2 3; do
		consul_leader "${PORT[consul-cluster-$i]}" && [[ $LEADER == "$leader" ]] || return 1
	done
}

# topology_ok NAME: the topology is whole and healthy (every unit answers).
topology_ok() {
	local u
	case $1 in
	redis-cluster | redis-cluster-ha) cluster_ok "$1" ;;
	redis-sentinel) sentinel_ok ;;
	consul-cluster) consul_cluster_ok ;;
	*) for u in ${UNITS[$1]}; do probe "$u" || return 1; done ;;
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
	for u in ${UNITS[$name]}; do
		if ourpid "$u"; then running=1; fi
	done
	# Nodes of a cluster that is gone entirely start fresh and are formed
	# again; a node rejoining running peers keeps its nodes.conf.
	[[ $running == 1 ]] && keep=1
	# shellcheck disable=SC2086 # unit names have no spaces
	start_units "$keep" ${UNITS[$name]}
	cluster_ok "$name" && return 0
	local slots=0 n addrs=() replicas=0 first=""
	for u in ${UNITS[$name]}; do
		redis "${PORT[$u]}" CLUSTER INFO || true
		n=${REDIS_OUT#*cluster_slots_assigned:}
		n=${n%%$'\n'*}
		[[ $n =~ ^[0-9]+$ ]] && slots=$((slots + n))
		addrs+=("$HOST:${PORT[$u]}")
		first=${first:-$u}
	done
	if [[ $slots == 0 ]]; then
		[[ $name == redis-cluster-ha ]] && replicas=1
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
	for u in ${UNITS[$name]}; do
		if ourpid "$u"; then running=1; fi
	done
	[[ $running == 1 ]] && keep=1
	case $name in
	redis-sentinel)
		# The Sentinels first: restarted, they know which node is the
		# primary now (fresh, redis-ha-1), and each node replicates from
		# the primary they name.
		start_units "$keep" sentinel-1 sentinel-2 sentinel-3
		start_units "$keep" redis-ha-1 redis-ha-2 redis-ha-3
		wait_topology "$name"
		;;
	consul-cluster)
		# shellcheck disable=SC2086 # unit names have no spaces
		start_units "$keep" ${UNITS[$name]}
		wait_topology "$name"
		;;
	*)
		# Every unit answering is all there is to check.
		# shellcheck disable=SC2086 # unit names have no spaces
		start_units "$keep" ${UNITS[$name]}
		;;
	esac
	say "$name: healthy"
}

start_name() { # NAME KEEP
	local topo=${TOPO[$1]:-$1}
	case $1 in
	redis-cluster | redis-cluster-ha) start_redis_cluster "$1" "${2:-0}" ;;
	etcd-cluster | consul-cluster | redis-sentinel | memcached-cluster) start_topology "$1" "${2:-0}" ;;
	*)
		if [[ $topo == "$1" ]]; then
			start_units "${2:-0}" "$1"
		else
			# One unit of a topology rejoins it with its data.
			start_units 1 "$1"
			wait_topology "$topo"
			say "$topo: healthy"
		fi
		;;
	esac
}

# ---------------------------------------------------------------- roles

# role UNIT: set ROLE and PEER (see the header) for a running unit.
role() {
	local unit=$1 p=${PORT[$1]} id leader
	ROLE=unknown
	PEER=-
	case $unit in
	etcd-cluster-*)
		if http "$p" POST /v3/maintenance/status '{}'; then
			id=${HTTP_BODY#*\"member_id\":\"}
			id=${id%%\"*}
			leader=${HTTP_BODY#*\"leader\":\"}
			leader=${leader%%\"*}
			if [[ -n $id && $id == "$leader" ]]; then ROLE=leader; elif [[ -n $leader ]]; then ROLE=follower; fi
		fi
		;;
	consul-cluster-client) ROLE=client ;;
	consul-cluster-*)
		if consul_leader "${PORT[consul-cluster-client]}"; then
			ports_of "$unit"
			if [[ $LEADER == "$HOST:${PP[1]}" ]]; then ROLE=leader; else ROLE=follower; fi
		fi
		;;
	redis | redis-cluster-* | redis-ha-*)
		if redis "$p" ROLE; then
			first_line "$REDIS_OUT"
			case $FIRST in
			master) ROLE=primary ;;
			slave)
				ROLE=replica
				line 3 "$REDIS_OUT"
				unit_at "${TOPO[$unit]}" "$LINE" && PEER=$UNIT_AT
				;;
			esac
		fi
		;;
	sentinel-*)
		if redis "$p" SENTINEL get-master-addr-by-name "$SENTINEL_MASTER"; then
			ROLE=sentinel
			line 2 "$REDIS_OUT"
			unit_at redis-sentinel "$LINE" && PEER=$UNIT_AT
		fi
		;;
	*) if probe "$unit"; then ROLE=node; fi ;;
	esac
}

cmd_nodes() { # NAME
	local u
	for u in ${UNITS[$1]:-$1}; do
		if ! ourpid "$u" 2>/dev/null; then
			ROLE=down PEER=-
		elif stopped "$OURPID"; then
			ROLE=paused PEER=-
		else
			role "$u"
		fi
		echo "$u $HOST:${PORT[$u]} $ROLE $PEER"
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
	local t0=$SECONDS n u ports=()
	# Fail on a taken port, build Consul and make the PostgreSQL template
	# before anything starts.
	for n in "${names[@]}"; do
		for u in ${UNITS[$n]:-$n}; do
			ourpid "$u" && continue
			# shellcheck disable=SC2206 # a list of ports
			ports+=(${PORTS[$u]})
			[[ ${KIND[$u]} == consul ]] && build_consul
			[[ $u == postgres ]] && pg_template
		done
	done
	if [[ ${#ports[@]} -gt 0 ]] && listening "${ports[@]}"; then
		for u in "${!PORTS[@]}"; do
			[[ " ${PORTS[$u]} " == *" $TAKEN "* ]] && break
		done
		die "port $TAKEN (for $u) is already in use by a process this script did not start; stop it or free the port, then run start again"
	fi
	if [[ ${#names[@]} -eq 1 ]]; then
		start_name "${names[0]}" 0
	else
		# Servers and topologies start side by side; each waits for its own.
		local pids=() failed=() i
		for n in "${names[@]}"; do
			start_name "$n" 0 &
			pids+=($!)
		done
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
		for u in ${UNITS[$n]:-$n}; do stop_unit "$u" 1; done
	done
}

cmd_status() {
	local n u bad=0 state
	for n in "${NAMES[@]}"; do
		for u in ${UNITS[$n]}; do
			if [[ ! -f $DIR/$u.pid ]]; then
				state="not running"
				bad=1
			elif ! ourpid "$u" 2>/dev/null; then
				state="not running (stale pid file removed)"
				bad=1
			elif stopped "$OURPID"; then
				state="paused (pid $OURPID)"
				bad=1
			elif probe "$u"; then
				state="running (pid $OURPID), answers on ${PORT[$u]}"
			else
				state="running (pid $OURPID), NOT answering"
				bad=1
			fi
			printf '%-22s %s\n' "$u" "$state"
		done
	done
	return "$bad"
}

# addrs NAME PATTERN: set ADDRS to the client addresses of NAME's units
# matching PATTERN, comma-separated.
addrs() {
	local u
	ADDRS=
	for u in ${UNITS[$1]}; do
		# shellcheck disable=SC2053 # $2 is a glob on purpose
		[[ $u == $2 ]] && ADDRS+="${ADDRS:+,}$HOST:${PORT[$u]}"
	done
	return 0
}

cmd_env() {
	local cluster etcd_cluster sentinels cluster_ha memcached_cluster
	addrs redis-cluster '*' && cluster=$ADDRS
	addrs etcd-cluster '*' && etcd_cluster=$ADDRS
	addrs redis-sentinel 'sentinel-*' && sentinels=$ADDRS
	addrs redis-cluster-ha '*' && cluster_ha=$ADDRS
	addrs memcached-cluster '*' && memcached_cluster=$ADDRS
	cat <<EOF
export IDEMLOCK_REDIS_ADDR=$HOST:${PORT[redis]}
export IDEMLOCK_REDIS_CLUSTER_ADDRS=$cluster
export IDEMLOCK_ETCD_ENDPOINTS=$HOST:${PORT[etcd]}
export IDEMLOCK_CONSUL_ADDR=$HOST:${PORT[consul]}
export IDEMLOCK_MEMCACHED_ADDR=$HOST:${PORT[memcached]}
export IDEMLOCK_ETCD_CLUSTER_ENDPOINTS=$etcd_cluster
export IDEMLOCK_CONSUL_CLUSTER_ADDR=$HOST:${PORT[consul-cluster-client]}
export IDEMLOCK_REDIS_SENTINEL_ADDRS=$sentinels
export IDEMLOCK_REDIS_SENTINEL_MASTER=$SENTINEL_MASTER
export IDEMLOCK_REDIS_CLUSTER_HA_ADDRS=$cluster_ha
export IDEMLOCK_MEMCACHED_CLUSTER_ADDRS=$memcached_cluster
export IDEMLOCK_POSTGRES_URL='postgres://postgres@$HOST:${PORT[postgres]}/postgres?sslmode=disable'
EOF
}

cmd_signal() { # SIG VERB NAME
	local sig=$1 verb=$2 name=$3 u
	lock
	for u in ${UNITS[$name]:-$name}; do
		ourpid "$u" || die "$u is not running (start it with: $0 start)"
		signal "$sig" "$OURPID"
		say "$u: $verb (pid $OURPID)"
	done
}

# cmd_kill NAME: SIGKILL each unit and its child processes and wait until
# every one is gone; the data stays for `start`.
cmd_kill() {
	local u pid deadline p
	lock
	for u in ${UNITS[$1]:-$1}; do
		ourpid "$u" || die "$u is not running (start it with: $0 start)"
		pid=$OURPID
		signal KILL "$pid" || true
		deadline=$((SECONDS + 10))
		for p in "${FAMILY[@]}"; do
			while alive "$p"; do
				((SECONDS < deadline)) || die "$u: pid $p survived SIGKILL for 10s"
				sleep 0.05
			done
		done
		rm -f "$DIR/$u.pid"
		say "$u: killed (pid $pid)"
	done
}

cmd_restart() {
	local name=$1 u
	lock
	install_packages
	for u in ${UNITS[$name]:-$name}; do stop_unit "$u"; done
	start_name "$name" 1
}

# cmd_failover NAME: a manual failover that returns once done.
cmd_failover() {
	local name=$1 old deadline s sent
	lock
	deadline=$((SECONDS + TIMEOUT))
	case $name in
	redis-sentinel)
		sentinel_master || die "no Sentinel of redis-sentinel answers"
		old=$MASTER
		for s in sentinel-1 sentinel-2 sentinel-3; do
			redis "${PORT[$s]}" SENTINEL failover "$SENTINEL_MASTER" && break
		done
		until sentinel_master && [[ $MASTER != "$old" ]] && redis "$MASTER" ROLE &&
			first_line "$REDIS_OUT" && [[ $FIRST == master ]]; do
			((SECONDS < deadline)) || die "redis-sentinel: no new primary within ${TIMEOUT}s"
			sleep 0.1
		done
		say "redis-sentinel: primary moved from port $old to port $MASTER"
		wait_topology redis-sentinel
		;;
	redis-cluster-ha-[1-6])
		local p=${PORT[$name]}
		if ! { redis "$p" ROLE && first_line "$REDIS_OUT" && [[ $FIRST == slave ]]; }; then
			die "$name is not a replica; CLUSTER FAILOVER is sent to the replica to promote"
		fi
		redis "$p" CLUSTER FAILOVER || die "$name refused CLUSTER FAILOVER: $REDIS_OUT"
		sent=$SECONDS
		until redis "$p" ROLE && first_line "$REDIS_OUT" && [[ $FIRST == master ]]; do
			((SECONDS < deadline)) || die "$name was not promoted within ${TIMEOUT}s"
			# Redis aborts a manual failover the primary did not agree
			# to within 5 s (a loaded machine); ask again.
			if ((SECONDS - sent >= 6)); then
				redis "$p" CLUSTER FAILOVER || true
				sent=$SECONDS
			fi
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
	local cmd=$1
	shift
	find_binaries
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
