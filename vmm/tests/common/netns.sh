# netns: starts a sleeper in a network namespace of its own and prints its pid once that
# namespace exists. `unshare -n sleep N &` alone hands out $! before unshare(2) has run, and
# a veth end moved to that pid's namespace so early stays in ours.
netns() { unshare -n sleep 900 >/dev/null 2>&1 & ns_pid=$!; ns_i=0
  while [ "$(readlink /proc/$ns_pid/ns/net)" = "$(readlink /proc/self/ns/net)" ]; do
  ns_i=$((ns_i+1)); [ $ns_i -gt 200 ] && break; sleep 0.05; done; echo $ns_pid; }
