#!/bin/bash
# make demo: a process holding a secret counts; a plain dump is shown to hold
# the secret, then criu dumps it encrypted for a throwaway certificate and
# the secret is shown to be in no file criu wrote (page images included), a
# restore without the key is refused, and the restore with the key carries
# on counting.
# Usage: demo.sh CRIU KEYDIR
set -euo pipefail
criu=$1
keys=$2
work=$(mktemp -d /tmp/criusec-demo.XXXXXX)
pid=""
cleanup() {
	if [ -n "$pid" ]; then pkill -KILL -s "$pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { echo "demo: $*" >&2; exit 1; }

"$criu" --version
[ -f "$keys/demo-key.pem" ] || "$(dirname "$0")/../../pki/criusec-keygen" "$keys" demo >/dev/null
echo "throwaway key pair: $keys/demo-cert.pem, $keys/demo-key.pem"

secret="demo-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
# The counter keeps a secret in a pipe it never reads: pipe data is one of
# the raw images criu writes.
cat >"$work/counter.sh" <<'EOT'
#!/bin/bash
exec 3< <(printf '%s' "$SECRET"; sleep infinity)
n=0
while :; do
	n=$((n + 1))
	echo "$n" >"$1"
	sleep 0.1
done
EOT
chmod +x "$work/counter.sh"

step "start a counting process with a secret in a pipe"
SECRET=$secret setsid "$work/counter.sh" "$work/count" </dev/null >/dev/null 2>&1 &
pid=$!
sleep 1
echo "pid $pid has counted to $(cat "$work/count")"

# Every file of a directory that holds the secret, or nothing.
holding() { grep -l -a -F "$secret" "$1"/* 2>/dev/null || true; }

step "a plain criu dump --leave-running, for comparison"
mkdir -p "$work/plain"
"$criu" dump -t "$pid" -D "$work/plain" -o dump.log --leave-running ||
	{ tail -20 "$work/plain/dump.log"; fail "plain dump failed"; }
hits=$(holding "$work/plain")
[ -n "$hits" ] || fail "the secret is in no file of the plain dump: the scan below would prove nothing"
hits_plain=$hits
echo "plain images: the secret $secret is in clear in:"
for f in $hits; do echo "  $(basename "$f")"; done

mkdir -p "$work/img"
pgrep -s "$pid" >"$work/pids"
step "criu dump --encrypt --tls-cert $keys/demo-cert.pem"
"$criu" dump -t "$pid" -D "$work/img" -o dump.log -v4 --encrypt --tls-cert "$keys/demo-cert.pem" ||
	{ tail -20 "$work/img/dump.log"; fail "dump failed"; }
wait "$pid" 2>/dev/null || true
# The tree's other tasks were re-parented to init: wait until they are gone
# too, or restoring their pids fails with "File exists".
while read -r p; do
	for _ in $(seq 200); do [ -e "/proc/$p" ] || break; sleep 0.05; done
done <"$work/pids"
before=$(cat "$work/count")
echo "dumped at $before"
find "$work/img" -maxdepth 1 -type f -printf '%M %10s %f\n' | sort -k3 | head -30

step "the secret is in none of the $(find "$work/img" -maxdepth 1 -type f | wc -l) files criu wrote (pages, pipe data and logs included)"
hits=$(holding "$work/img")
[ -z "$hits" ] || fail "secret found in: $hits"
echo "encrypted images: the secret is in no file (the plain dump held it in $(echo "$hits_plain" | wc -w) of its files)"
head -c 8 "$work/img/pstree.img" | od -c | head -1

step "criu restore without the key is refused"
if "$criu" restore -d -D "$work/img" -o restore-nokey.log --tls-key /nonexistent.pem; then
	fail "restore without a key succeeded"
fi
grep "criusec" "$work/img/restore-nokey.log" || true
ps -p "$pid" >/dev/null && fail "a task is left running"

step "criu restore --tls-key $keys/demo-key.pem"
"$criu" restore -d -D "$work/img" -o restore.log -v4 --tls-key "$keys/demo-key.pem" ||
	{ tail -20 "$work/img/restore.log"; fail "restore failed"; }
sleep 1
after=$(cat "$work/count")
echo "pid $pid is back and has counted from $before to $after"
[ "$after" -gt "$before" ] || fail "the restored process did not carry on"
step "demo passed"
