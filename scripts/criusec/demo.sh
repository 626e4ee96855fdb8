#!/bin/bash
# make demo: start a process that counts, dump it with criu, restore it, and
# show that it carried on counting from where it was.
# Usage: demo.sh CRIU
set -euo pipefail
criu=$1
work=$(mktemp -d /tmp/criusec-demo.XXXXXX)
trap 'pkill -KILL -s "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

"$criu" --version
# The counter writes its count to a file every 100 ms.
cat >"$work/counter.sh" <<'EOT'
#!/bin/bash
n=0
while :; do
	n=$((n + 1))
	echo "$n" >"$1"
	sleep 0.1
done
EOT
chmod +x "$work/counter.sh"

step "start a counting process"
setsid "$work/counter.sh" "$work/count" </dev/null >/dev/null 2>&1 &
pid=$!
sleep 1
echo "pid $pid has counted to $(cat "$work/count")"

step "criu dump -t $pid -D $work/img"
"$criu" dump -t "$pid" -D "$work/img" -o dump.log -v4 || { tail -20 "$work/img/dump.log"; exit 1; }
wait "$pid" 2>/dev/null || true
before=$(cat "$work/count")
echo "dumped at $before; the process is gone: $(ps -p "$pid" >/dev/null && echo NO || echo yes)"
ls -la "$work/img" | head -20

step "criu restore -d -D $work/img"
"$criu" restore -d -D "$work/img" -o restore.log -v4 || { tail -20 "$work/img/restore.log"; exit 1; }
sleep 1
after=$(cat "$work/count")
echo "pid $pid is back and has counted from $before to $after"
[ "$after" -gt "$before" ] || { echo "demo: the restored process did not carry on" >&2; exit 1; }
step "demo passed"
