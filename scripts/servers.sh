#!/usr/bin/env bash
# servers.sh — the real servers idemlock's tests run against, on loopback.
#
#   scripts/servers.sh start [NAME...]  install what is missing, start all (or the NAMEs), wait until they answer
#   scripts/servers.sh stop [NAME...]   stop what this script started (by recorded pid)
#   scripts/servers.sh status           show each server; exit 1 unless all answer
#   scripts/servers.sh env              print export lines: eval "$(scripts/servers.sh env)"
#   scripts/servers.sh pause NAME       SIGSTOP a server (fault tests)
#   scripts/servers.sh resume NAME      SIGCONT it again
#   scripts/servers.sh restart NAME     stop it and start it again, waiting until it answers
#
# NAME is redis, redis-cluster, etcd, consul or memcached; redis-cluster-17001
# (…17002, …17003) names a single cluster node.
#
# Ports (all on 127.0.0.1, none of them a default so a system server can run
# beside): Redis 16379; Redis Cluster 17001-17003 (bus 27001-27003); etcd
# client 12379, peer 12380; Consul http 18500, server 18300, serf 18301/18302,
# grpc 18502 (dns, https and grpc_tls disabled); memcached 21211.
#
# IDEMLOCK_PORT_OFFSET (default 0) is added to every port: with a scratch
# folder of its own it runs a private set of servers beside the shared one
# (internal/testenv.Private does that for fault tests).
#
# Data, logs and pid files live in ${IDEMLOCK_SERVERS_DIR:-<repo>/.servers}.
# Consul (MPL-2.0 v1.14.11, built from source once) is cached in
# ${IDEMLOCK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/idemlock}.
#
# State: Redis runs without persistence, memcached and Consul (dev mode) keep
# nothing, so a restart loses their data, as a real restart of such a server
# would. etcd keeps its data across `restart` (it is durable) but `start` of a
# stopped etcd begins empty. A stopped cluster is re-created on `start`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${IDEMLOCK_SERVERS_DIR:-$ROOT/.servers}
CACHE=${IDEMLOCK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/idemlock}
CONSUL_VERSION=v1.14.11
CONSUL_BIN=$CACHE/consul-$CONSUL_VERSION/consul
# Seconds to wait for one server to answer.
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

NAMES=(redis redis-cluster etcd consul memcached)

say() { printf 'servers.sh: %s\n' "$*" >&2; }
die() { printf 'servers.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
	sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

# ---------------------------------------------------------------- units
# A unit is one process: redis, redis-cluster-1700N, etcd, consul, memcached.

# units NAME: the units a NAME stands for.
units() {
	case $1 in
	redis | etcd | consul | memcached) echo "$1" ;;
	redis-cluster) printf 'redis-cluster-%s\n' "${CLUSTER_PORTS[@]}" ;;
	redis-cluster-[0-9]*)
		[[ " ${CLUSTER_PORTS[*]} " == *" ${1#redis-cluster-} "* ]] || die "unknown cluster node '$1' (nodes: ${CLUSTER_PORTS[*]})"
		echo "$1"
		;;
	*) die "unknown server '$1' (want one of: ${NAMES[*]})" ;;
	esac
}

all_units() { for n in "${NAMES[@]}"; do units "$n"; done; }

# binary UNIT: the command a unit runs.
binary() {
	case $1 in
	redis | redis-cluster-*) echo redis-server ;;
	etcd) echo etcd ;;
	consul) echo "$CONSUL_BIN" ;;
	memcached) echo memcached ;;
	esac
}

# ports UNIT: every TCP port a unit listens on.
ports() {
	case $1 in
	redis) echo "$REDIS_PORT" ;;
	redis-cluster-*) local p=${1#redis-cluster-}; echo "$p $((p + 10000))" ;;
	etcd) echo "$ETCD_PORT $ETCD_PEER_PORT" ;;
	consul) echo "$CONSUL_HTTP $CONSUL_SERVER $CONSUL_SERF_LAN $CONSUL_SERF_WAN $CONSUL_GRPC" ;;
	memcached) echo "$MEMCACHED_PORT" ;;
	esac
}

pidfile() { echo "$DIR/$1.pid"; }
logfile() { echo "$DIR/$1.log"; }

# exe_of BINARY: the resolved path of the executable a binary name runs.
exe_of() {
	local b
	b=$(command -v "$1" 2>/dev/null) || return 1
	readlink -f "$b"
}

# alive PID: the process exists and is not a zombie.
alive() {
	local state
	[[ -r /proc/$1/stat ]] || return 1
	state=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
	[[ -n $state && $state != Z && $state != X ]]
}

stopped() { # PID is in stopped (SIGSTOP) state
	local state
	state=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
	[[ $state == T ]]
}

# starttime PID: when the process started (clock ticks since boot); with the
# pid it names one process for good, even after the pid is reused.
starttime() {
	sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20
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

probe_redis() { # PORT
	[[ $(timeout 3 redis-cli -h "$HOST" -p "$1" PING 2>/dev/null) == PONG ]]
}

probe_memcached() {
	# shellcheck disable=SC2016 # expanded by the inner bash
	timeout 3 bash -c '
		exec 3<>"/dev/tcp/$1/$2" || exit 1
		printf "version\r\n" >&3
		IFS= read -r line <&3 || exit 1
		[[ $line == VERSION* ]]' _ "$HOST" "$MEMCACHED_PORT" 2>/dev/null
}

probe_etcd() {
	ETCDCTL_API=3 timeout 5 etcdctl --endpoints "$HOST:$ETCD_PORT" \
		--dial-timeout=2s --command-timeout=3s endpoint health >/dev/null 2>&1
}

# http_get PATH: body of a GET on the Consul HTTP port.
http_get() {
	if command -v curl >/dev/null 2>&1; then
		curl -fsS --max-time 3 "http://$HOST:$CONSUL_HTTP$1" 2>/dev/null
		return
	fi
	# shellcheck disable=SC2016 # expanded by the inner bash
	timeout 3 bash -c '
		exec 3<>"/dev/tcp/$1/$2" || exit 1
		printf "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" "$3" "$1" >&3
		IFS= read -r status <&3 || exit 1
		[[ $status == *" 200 "* ]] || exit 1
		while IFS= read -r line <&3 && [[ $line != $'"'"'\r'"'"' ]]; do :; done
		cat <&3' _ "$HOST" "$CONSUL_HTTP" "$1" 2>/dev/null
}

# Consul answers once it has a leader and its own node is in the catalog
# (sessions cannot be created before that).
probe_consul() {
	local leader node
	leader=$(http_get /v1/status/leader) || return 1
	[[ -n $leader && $leader != '""' ]] || return 1
	node=$(http_get /v1/catalog/node/idemlock) || return 1
	[[ $node == *'"Node":'* ]]
}

probe() { # UNIT
	case $1 in
	redis) probe_redis "$REDIS_PORT" ;;
	redis-cluster-*) probe_redis "${1#redis-cluster-}" ;;
	etcd) probe_etcd ;;
	consul) probe_consul ;;
	memcached) probe_memcached ;;
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
	[[ ${#missing[@]} -eq 0 ]] && return 0
	command -v apt-get >/dev/null 2>&1 ||
		die "missing packages ${missing[*]} and no apt-get to install them; install them by hand"
	say "installing ${missing[*]}"
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

# ---------------------------------------------------------------- configs

write_redis_conf() { # UNIT PORT CLUSTER(0|1)
	local d=$DIR/$1
	mkdir -p "$d"
	{
		echo "bind $HOST"
		echo "port $2"
		echo "protected-mode yes"
		echo "daemonize no"
		echo "dir \"$d\""
		echo 'logfile ""'
		echo 'save ""'
		echo "appendonly no"
		if [[ $3 == 1 ]]; then
			echo "cluster-enabled yes"
			echo "cluster-config-file \"$d/nodes.conf\""
			echo "cluster-node-timeout 5000"
		fi
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
		setsid "$@" </dev/null >>"$log" 2>&1 8>&- 9>&- &
	else
		"$@" </dev/null >>"$log" 2>&1 8>&- 9>&- &
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

# start_unit UNIT KEEP: start one unit unless it already runs; KEEP=1 keeps
# its data from a previous run (restart), KEEP=0 starts it empty.
start_unit() {
	local unit=$1 keep=${2:-0} pid
	if pid=$(ourpid "$unit"); then
		if stopped "$pid"; then
			say "$unit: pid $pid was paused, resuming it"
			kill -CONT "$pid"
		fi
		wait_ready "$unit"
		say "$unit: already running (pid $pid), reused"
		return 0
	fi
	local t0=$SECONDS
	case $unit in
	redis)
		write_redis_conf redis "$REDIS_PORT" 0
		launch redis redis-server "$DIR/redis/redis.conf"
		;;
	redis-cluster-*)
		write_redis_conf "$unit" "${unit#redis-cluster-}" 1
		[[ $keep == 1 ]] || rm -f "$DIR/$unit/nodes.conf"
		launch "$unit" redis-server "$DIR/$unit/redis.conf"
		;;
	etcd)
		[[ $keep == 1 ]] || rm -rf "$DIR/etcd/data"
		mkdir -p "$DIR/etcd"
		local arch
		arch=$(uname -m)
		[[ $arch == aarch64 ]] && export ETCD_UNSUPPORTED_ARCH=arm64
		launch etcd etcd --name idemlock --data-dir "$DIR/etcd/data" \
			--listen-client-urls "http://$HOST:$ETCD_PORT" \
			--advertise-client-urls "http://$HOST:$ETCD_PORT" \
			--listen-peer-urls "http://$HOST:$ETCD_PEER_PORT" \
			--initial-advertise-peer-urls "http://$HOST:$ETCD_PEER_PORT" \
			--initial-cluster "idemlock=http://$HOST:$ETCD_PEER_PORT" \
			--logger zap --log-outputs stderr
		;;
	consul)
		build_consul
		write_consul_conf
		launch consul "$CONSUL_BIN" agent -dev -client "$HOST" -bind "$HOST" \
			-config-file "$DIR/consul/consul.hcl"
		;;
	memcached)
		local user=()
		[[ $(id -u) -eq 0 ]] && user=(-u root)
		launch memcached memcached -l "$HOST" -p "$MEMCACHED_PORT" -U 0 -m 64 "${user[@]}"
		;;
	esac
	wait_ready "$unit"
	say "$unit: started (pid $(ourpid "$unit"), $((SECONDS - t0))s)"
}

stop_unit() {
	local unit=$1 pid
	if ! pid=$(ourpid "$unit"); then
		return 0
	fi
	kill_pid "$unit" "$pid"
	say "$unit: stopped (pid $pid)"
}

# kill_pid UNIT PID: SIGTERM (after SIGCONT, in case it is paused), SIGKILL
# if it lingers, and forget its pid file.
kill_pid() {
	local unit=$1 pid=$2 deadline
	kill -CONT "$pid" 2>/dev/null || true
	kill -TERM "$pid" 2>/dev/null || true
	deadline=$((SECONDS + 15))
	while alive "$pid"; do
		if ((SECONDS >= deadline)); then
			say "$unit: pid $pid ignored SIGTERM for 15s, killing it"
			kill -KILL "$pid" 2>/dev/null || true
			deadline=$((SECONDS + 5))
			while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
			break
		fi
		sleep 0.1
	done
	alive "$pid" && die "$unit: pid $pid would not exit"
	rm -f "$(pidfile "$unit")"
}

cluster_field() { # PORT FIELD
	timeout 3 redis-cli -h "$HOST" -p "$1" CLUSTER INFO 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"
}

cluster_ok() {
	local p
	for p in "${CLUSTER_PORTS[@]}"; do
		[[ $(cluster_field "$p" cluster_state) == ok ]] || return 1
		[[ $(cluster_field "$p" cluster_known_nodes) == "${#CLUSTER_PORTS[@]}" ]] || return 1
		[[ $(cluster_field "$p" cluster_slots_ok) == 16384 ]] || return 1
	done
}

# start_cluster KEEP: three masters, formed into one cluster with all slots.
start_cluster() {
	local keep=${1:-0} p running=0 u
	for p in "${CLUSTER_PORTS[@]}"; do
		ourpid "redis-cluster-$p" >/dev/null && running=1
	done
	# Nodes of a cluster that is gone entirely start fresh and are formed
	# again; a node rejoining running peers keeps its nodes.conf.
	[[ $running == 1 ]] && keep=1
	for p in "${CLUSTER_PORTS[@]}"; do
		start_unit "redis-cluster-$p" "$keep"
	done
	cluster_ok && return 0
	local slots=0 n
	for p in "${CLUSTER_PORTS[@]}"; do
		n=$(cluster_field "$p" cluster_slots_assigned)
		slots=$((slots + ${n:-0}))
	done
	if [[ $slots == 0 ]]; then
		local addrs=()
		for p in "${CLUSTER_PORTS[@]}"; do addrs+=("$HOST:$p"); done
		u=redis-cluster-${CLUSTER_PORTS[0]}
		say "redis-cluster: creating cluster of ${addrs[*]}"
		if ! timeout 60 redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes \
			>>"$(logfile "$u")" 2>&1 </dev/null; then
			fail_log "$u" "redis-cli --cluster create failed"
		fi
	fi
	local deadline=$((SECONDS + TIMEOUT))
	until cluster_ok; do
		if ((SECONDS >= deadline)); then
			for p in "${CLUSTER_PORTS[@]}"; do
				echo "--- $HOST:$p cluster info:" >&2
				timeout 3 redis-cli -h "$HOST" -p "$p" CLUSTER INFO 2>&1 | head -n 8 >&2 || true
			done
			die "redis-cluster did not reach cluster_state:ok on all nodes within ${TIMEOUT}s; try: $0 restart redis-cluster"
		fi
		sleep 0.2
	done
	say "redis-cluster: cluster_state ok on ${CLUSTER_PORTS[*]}"
}

start_name() { # NAME KEEP
	case $1 in
	redis-cluster) start_cluster "${2:-0}" ;;
	redis-cluster-*)
		start_unit "$1" 1
		start_cluster 1
		;;
	*) start_unit "$1" "${2:-0}" ;;
	esac
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
			[[ $u == consul ]] && build_consul
		done
	done
	for n in "${names[@]}"; do
		start_name "$n" 0
	done
	say "${names[*]} answer ($((SECONDS - t0))s); dir $DIR"
}

cmd_stop() { # [NAME...]
	local names=("$@") n u
	[[ ${#names[@]} -gt 0 ]] || names=("${NAMES[@]}")
	lock
	for n in "${names[@]}"; do
		for u in $(units "$n"); do stop_unit "$u"; done
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
			state="running (pid $pid), answers on $(ports "$u" | cut -d' ' -f1)"
		else
			state="running (pid $pid), NOT answering"
			bad=1
		fi
		printf '%-20s %s\n' "$u" "$state"
	done
	return "$bad"
}

cmd_env() {
	local addrs=() p
	for p in "${CLUSTER_PORTS[@]}"; do addrs+=("$HOST:$p"); done
	local IFS=,
	cat <<EOF
export IDEMLOCK_REDIS_ADDR=$HOST:$REDIS_PORT
export IDEMLOCK_REDIS_CLUSTER_ADDRS=${addrs[*]}
export IDEMLOCK_ETCD_ENDPOINTS=$HOST:$ETCD_PORT
export IDEMLOCK_CONSUL_ADDR=$HOST:$CONSUL_HTTP
export IDEMLOCK_MEMCACHED_ADDR=$HOST:$MEMCACHED_PORT
EOF
}

cmd_signal() { # SIG VERB NAME
	local sig=$1 verb=$2 name=$3 u pid
	lock
	for u in $(units "$name"); do
		pid=$(ourpid "$u") || die "$u is not running (start it with: $0 start)"
		kill "-$sig" "$pid"
		say "$u: $verb (pid $pid)"
	done
}

cmd_restart() {
	local name=$1 u
	lock
	install_packages
	for u in $(units "$name"); do stop_unit "$u"; done
	start_name "$name" 1
}

main() {
	[[ $# -ge 1 ]] || usage
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
	pause | resume | restart)
		[[ $# -eq 1 ]] || usage
		units "$1" >/dev/null # dies on an unknown name
		case $cmd in
		pause) cmd_signal STOP paused "$1" ;;
		resume) cmd_signal CONT resumed "$1" ;;
		restart) cmd_restart "$1" ;;
		esac
		;;
	-h | --help | help) usage ;;
	*) usage ;;
	esac
}

main "$@"
