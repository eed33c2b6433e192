#!/usr/bin/env python3
# Measures failover of a running 3-node cluster started from /tmp/b3/c.toml (see docs/BENCHMARKS.md):
#   failover.py leader  kill -9 the leader; time until the survivors report a new one, then an admin write
#   failover.py host    kill -9 the node hosting the model; time until a request via another node succeeds
import json, os, signal, subprocess, sys, time, urllib.request
def get(url, key="hf-admin", data=None, method=None):
    req = urllib.request.Request(url, data=data, method=method, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=2) as r: return r.status, r.read()
    except urllib.error.HTTPError as e: return e.code, e.read()
    except Exception as e: return None, str(e).encode()
def status(port): 
    s, b = get(f"http://127.0.0.1:{port}/admin/v1/cluster"); return json.loads(b) if s == 200 else None
def pid_of(node):
    out = subprocess.check_output(["pgrep", "-f", f"config c.toml --id {node}"]).split()
    return int(out[0])
ports = {1: 18301, 2: 18302, 3: 18303}
mode = sys.argv[1]
st = status(18301) or status(18302) or status(18303)
if mode == "host":
    host = [p["node"] for p in st["placements"]][0]
    other = [n for n in ports if n != host][0]
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}).encode()
    assert get(f"http://127.0.0.1:{ports[other]}/v1/chat/completions", data=body)[0] == 200
    os.kill(pid_of(host), signal.SIGKILL); t0 = time.perf_counter(); fails = 0
    while True:
        s, b = get(f"http://127.0.0.1:{ports[other]}/v1/chat/completions", data=body)
        if s == 200: break
        fails += 1; time.sleep(0.01)
    print(f"killed host node-{host}; model served again via node-{other} after {time.perf_counter()-t0:.2f}s ({fails} refused meanwhile)")
else:
    leader = st["leader"]; other = [n for n in ports if n != leader]
    os.kill(pid_of(leader), signal.SIGKILL); t0 = time.perf_counter()
    while True:
        s = status(ports[other[0]])
        if s and s["leader"] not in (None, leader): break
        time.sleep(0.01)
    t1 = time.perf_counter()
    s, b = get(f"http://127.0.0.1:{ports[other[0]]}/admin/v1/keys", data=json.dumps({"name": f"after-{int(t0)}"}).encode())
    print(f"killed leader node-{leader}; new leader node-{s and json.loads(b) and status(ports[other[0]])['leader']} after {t1-t0:.2f}s; admin write {s} {time.perf_counter()-t1:.3f}s later")
