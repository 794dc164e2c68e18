#!/usr/bin/env python3
"""Runs the xymqtt benchmarks (bench/xybench) against private Mosquitto brokers and writes
results.json, the chart and docs/benchmarks.md. Started by scripts/bench; see docs/benchmarks.md.

Modes: --smoke (tiny counts, CTest), --quick (a couple of minutes), default full.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BROKER_CONF = os.path.join(ROOT, "config", "mosquitto", "mosquitto.conf")
BROKER_LIB = os.path.join(ROOT, "scripts", "lib", "broker.sh")
XY_MQTT_MSGS_PER_S = 780.0  # the original xy-mqtt, synchronous=EXTRA, measured on machines like these

# Extra broker configuration of the benchmark broker (documented in docs/benchmarks.md).
# Empty: the project's config as it is.
BENCH_BROKER_EXTRA = os.environ.get("XYBENCH_BROKER_EXTRA", "")

PLANS = {
    # counts per scenario; "repeat" runs of each throughput/latency measurement, interleaved.
    "smoke": dict(repeat=1, ev={100: 200, 1024: 100, 65536: 20}, fsync_factor=1.0, rtt=30, rtt_many=200,
                  ping=3, mem=2000, rec=1000, scale=200, scale_max=2, disk=200, calls=20, calls_many=200),
    "quick": dict(repeat=1, ev={100: 10000, 1024: 5000, 65536: 500}, fsync_factor=0.3, rtt=300, rtt_many=2000,
                  ping=20, mem=100000, rec=20000, scale=2000, scale_max=4, disk=1000, calls=100, calls_many=2000),
    "full": dict(repeat=3, ev_repeat=5, ev={100: 100000, 1024: 20000, 65536: 2000}, fsync_factor=0.2, rtt=2000, rtt_many=10000,
                 ping=100, mem=1000000, rec=100000, scale=10000, scale_max=4, disk=3000, calls=200, calls_many=10000),
}

CHILDREN = []  # processes this script started (stopped on exit, by pid)


def log(*a):
    print("==>", *a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Broker:
    """A private Mosquitto from the project's config (rendered by scripts/lib/broker.sh)."""

    def __init__(self, workdir, port=None):
        self.dir = tempfile.mkdtemp(prefix="broker.", dir=workdir)
        os.makedirs(os.path.join(self.dir, "data"))
        os.makedirs(os.path.join(self.dir, "log"))
        self.port = port or free_port()
        self.proc = None
        conf = subprocess.run(
            ["bash", "-c", 'source "$1" && xymqtt_render_broker_config "$2" "$3" "$4"', "render", BROKER_LIB,
             BROKER_CONF, str(self.port), self.dir], check=True, capture_output=True, text=True).stdout
        if BENCH_BROKER_EXTRA:
            conf += "\n# benchmark only (docs/benchmarks.md)\n" + BENCH_BROKER_EXTRA.replace(";", "\n") + "\n"
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        with open(self.conf, "w") as f:
            f.write(conf)

    @property
    def uri(self):
        return "tcp://127.0.0.1:%d" % self.port

    def start(self):
        mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        out = open(os.path.join(self.dir, "stdout.log"), "a")
        self.proc = subprocess.Popen([mosq, "-c", self.conf], stdout=out, stderr=subprocess.STDOUT)
        CHILDREN.append(self.proc)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mosquitto exited; see " + self.dir)
            if port_open(self.port):
                return self
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not start; see " + self.dir)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cpu_s(self):
        """CPU seconds (user and system) the broker has used so far."""
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def errors(self):
        try:
            with open(os.path.join(self.dir, "log", "mosquitto.log")) as f:
                return [l.strip() for l in f if "Error" in l]
        except OSError:
            return []


class Proc:
    """A bench process whose stdout lines are collected; RESULT lines are parsed."""

    def __init__(self, args, name):
        self.name = name
        self.usage = None  # its resource usage (os.wait4), once `result` has reaped it
        self.lines = []
        self.cv = threading.Condition()
        self.err = open(os.path.join(OUT_TMP, name + ".stderr"), "w")
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.err, text=True)
        CHILDREN.append(self.p)
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for line in self.p.stdout:
            with self.cv:
                self.lines.append(line.strip())
                self.cv.notify_all()
        with self.cv:
            self.cv.notify_all()

    def wait_line(self, text, timeout):
        with self.cv:
            ok = self.cv.wait_for(lambda: text in self.lines or self.p.poll() is not None, timeout)
            if text in self.lines:
                return
        raise RuntimeError("%s: no '%s' (exit %s); stderr in %s" % (self.name, text, self.p.poll(), self.err.name))

    def result(self, timeout):
        # Reaped with wait4 for the process's own resource usage (CPU, context switches): where the time goes.
        deadline = time.time() + timeout
        while True:
            pid, status, usage = os.wait4(self.p.pid, os.WNOHANG)
            if pid == self.p.pid:
                self.p.returncode = os.waitstatus_to_exitcode(status)
                self.usage = usage
                break
            if time.time() > deadline:
                self.p.kill()
                self.p.wait()
                raise RuntimeError("%s timed out; stderr in %s" % (self.name, self.err.name))
            time.sleep(0.01)
        self.t.join(5)
        for l in self.lines:
            if l.startswith("RESULT "):
                return json.loads(l[len("RESULT "):])
        raise RuntimeError("%s gave no result (exit %s); stderr in %s" % (self.name, self.p.returncode, self.err.name))

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)


_seq = [0]


def uid(prefix):
    _seq[0] += 1
    return "%s%d-%d" % (prefix, os.getpid(), _seq[0])


def store_dir(name):
    return os.path.join(OUT_TMP, "stores", name)


# --------------------------------------------------------------------------------------------------
# scenarios

EVENT_CONFIGS = [
    # key, label, kind, extra flags
    ("xy_lmdb_fsync", "xymqtt LMDB fsync", "xy", ["--store", "lmdb", "--durability", "fsync"]),
    # The receiving side as over TLS or MQTT 3.1.1: each arrival committed in Paho's callback, receive maximum 1.
    ("xy_lmdb_ungrouped_fsync", "xymqtt LMDB fsync, arrivals not grouped (group_arrivals = false, as over TLS)", "xy",
     ["--store", "lmdb", "--durability", "fsync", "--group-arrivals", "0"]),
    ("xy_lmdb_process", "xymqtt LMDB process", "xy", ["--store", "lmdb", "--durability", "process"]),
    ("xy_sqlite_fsync", "xymqtt SQLite fsync", "xy", ["--store", "sqlite", "--durability", "fsync"]),
    ("paho_qos2", "raw Paho QoS 2", "paho", ["--qos", "2"]),
    ("paho_qos2_quiet", "raw Paho QoS 2, Paho's trace at errors (as xymqtt sets it, F19)", "paho",
     ["--qos", "2", "--paho-trace-errors", "1"]),
    # Paho's own work of a persistent client (each packet state serialized, a queued publish read back before it
    # is sent) with its records in a map: not crash-safe, the least any crash-safe client on Paho pays.
    ("paho_qos2_records", "raw Paho QoS 2, trace at errors, Paho's records kept in memory (its persistence work, no store)",
     "paho", ["--qos", "2", "--paho-trace-errors", "1", "--paho-persistence", "memory"]),
    ("paho_qos1", "raw Paho QoS 1", "paho", ["--qos", "1"]),
    # The bounds of fsync events on Paho's receive path: raw Paho that writes each message to a file on the
    # stores' filesystem and syncs it (fdatasync) in its receive callback, before Paho acknowledges it, and
    # does nothing else. "_fsync": counted as the fsync configurations are.
    ("paho_sync_rm1_fsync", "raw Paho QoS 2 + one fdatasync per message, receive maximum 1 (as xymqtt asks with fsync when arrivals are not grouped)",
     "paho", ["--qos", "2", "--receive-max", "1", "--sync-dir", "{sync_dir}"]),
    ("paho_sync_fsync", "raw Paho QoS 2 + one fdatasync per message, Paho's receive maximum (65,535)", "paho",
     ["--qos", "2", "--sync-dir", "{sync_dir}"]),
]


def event_run(broker, key, kind, flags, size, count):
    topic = "bench/" + uid("evt")
    sid, pid = uid("sub"), uid("pub")
    flags = [f.replace("{sync_dir}", store_dir(sid)) for f in flags]
    common = ["--broker", broker.uri, "--topic", topic, "--count", str(count), "--size", str(size)] + flags
    if kind == "xy":
        sub = Proc([BIN, "xy-sub", "--id", sid, "--dir", store_dir(sid)] + common, sid)
    else:
        sub = Proc([BIN, "paho-sub", "--id", sid] + common, sid)
    sub.wait_line("ready", 60)
    broker_cpu = broker.cpu_s()
    if kind == "xy":
        pub = Proc([BIN, "xy-pub", "--id", pid, "--dir", store_dir(pid)] + common, pid)
    else:
        pub = Proc([BIN, "paho-pub", "--id", pid] + common, pid)
    pr = pub.result(1800)
    sr = sub.result(1800)
    broker_cpu = broker.cpu_s() - broker_cpu
    for d in (store_dir(sid), store_dir(pid)):
        shutil.rmtree(d, ignore_errors=True)
    r = {"config": key, "size": size, "count": count, "e2e_msgs_per_s": sr["msgs_per_s"],
         "pub_msgs_per_s": pr["pub_msgs_per_s"], "lat_p50_ms": sr["lat_p50_ms"], "lat_p99_ms": sr["lat_p99_ms"],
         "complete": sr["complete"], "duplicates": sr["duplicates"]}
    # Where the time goes: each process's CPU per message, from its start to its exit (setup included, a few
    # ms), and the broker's over the same run; context switches per message, voluntary and not.
    for side, p in (("pub", pub), ("sub", sub)):
        u = p.usage
        r[side + "_cpu_us"] = (u.ru_utime + u.ru_stime) * 1e6 / count
        r[side + "_switches"] = (u.ru_nvcsw + u.ru_nivcsw) / count
    r["broker_cpu_us"] = broker_cpu * 1e6 / count
    return r


def scenario_events(broker, plan, res):
    runs = []
    # Event throughput varies most between runs (2 cores shared with other jobs): more runs for its medians.
    res["ev_repeat"] = plan.get("ev_repeat", plan["repeat"])
    for rep in range(res["ev_repeat"]):
        for size, count in plan["ev"].items():
            for key, label, kind, flags in EVENT_CONFIGS:
                # The fsync subscribers are disk-bound (one synced commit per message): fewer messages.
                n = max(20, int(count * plan["fsync_factor"])) if key.endswith("_fsync") else count
                log("events %s %d B x %d (run %d)" % (key, size, n, rep + 1))
                r = event_run(broker, key, kind, flags, size, n)
                log("   %.0f msg/s end to end" % r["e2e_msgs_per_s"])
                runs.append(r)
    res["events"] = runs


INFLIGHT20 = "max_inflight_messages 20"


def scenario_inflight20(plan, res):
    """The same 100-byte runs against a broker that limits in-flight QoS 2 deliveries per client to 20 (see
    Findings: without it Paho's receive thread scans an ever longer list of unacknowledged deliveries)."""
    global BENCH_BROKER_EXTRA
    saved, BENCH_BROKER_EXTRA = BENCH_BROKER_EXTRA, INFLIGHT20
    try:
        broker = Broker(OUT_TMP).start()
    finally:
        BENCH_BROKER_EXTRA = saved
    runs = []
    try:
        for rep in range(plan["repeat"]):
            for key, label, kind, flags in EVENT_CONFIGS:
                if key not in ("xy_lmdb_fsync", "xy_lmdb_process", "paho_qos2"):
                    continue
                count = plan["ev"][100]
                n = max(20, int(count * plan["fsync_factor"])) if key.endswith("_fsync") else count
                log("events (broker %s) %s 100 B x %d (run %d)" % (INFLIGHT20, key, n, rep + 1))
                r = event_run(broker, key, kind, flags, 100, n)
                log("   %.0f msg/s end to end" % r["e2e_msgs_per_s"])
                runs.append(r)
    finally:
        broker.stop()
    res["events_inflight20"] = runs


def scenario_disk(plan, res):
    runs = []
    for rep in range(plan["repeat"]):
        p = Proc([BIN, "disk", "--dir", os.path.join(OUT_TMP, "disk"), "--count", str(plan["disk"])], uid("disk"))
        runs.append(p.result(600))
        log("disk: fdatasync %.0f/s, LMDB synced commit %.0f/s, SQLite %.0f/s" % (
            runs[-1]["fdatasync_per_s"], runs[-1]["lmdb_fsync_commits_per_s"], runs[-1]["sqlite_fsync_commits_per_s"]))
    res["disk"] = runs


def start_server(broker, command, durability, group="", delay_ms=0, concurrency=1, extra=()):
    sid = uid("srv")
    args = [BIN, "serve", "--broker", broker.uri, "--id", sid, "--dir", store_dir(sid), "--command", command,
            "--durability", durability, "--delay-ms", str(delay_ms), "--concurrency", str(concurrency)] + list(extra)
    if group:
        args += ["--group", group]
    p = Proc(args, sid)
    return p, sid


def call_run(broker, command, durability, outstanding, count, warmup=50, results="shared", extra=()):
    cid = uid("call")
    p = Proc([BIN, "call", "--broker", broker.uri, "--id", cid, "--dir", store_dir(cid), "--command", command,
              "--durability", durability, "--outstanding", str(outstanding), "--count", str(count),
              "--warmup", str(warmup), "--results", results] + list(extra), cid)
    r = p.result(1800)
    shutil.rmtree(store_dir(cid), ignore_errors=True)
    return r


def scenario_rtt(broker, plan, res):
    runs = []
    for rep in range(plan["repeat"]):
        # "fsync-ungrouped": caller and server with group_arrivals = false (one at a time only).
        for variant in ("fsync", "fsync-ungrouped", "process"):
            durability = variant.split("-")[0]
            extra = ["--group-arrivals", "0"] if variant.endswith("ungrouped") else []
            command = "bench/" + uid("cmd")
            srv, sid = start_server(broker, command, durability, extra=extra)
            srv.wait_line("ready", 60)
            loads = ((1, plan["rtt"]),) if extra else ((1, plan["rtt"]), (16, plan["rtt_many"]), (256, plan["rtt_many"]))
            for outstanding, count in loads:
                log("commands %s, %d outstanding x %d (run %d)" % (variant, outstanding, count, rep + 1))
                r = call_run(broker, command, durability, outstanding, count, extra=extra)
                r.update(durability=variant)
                log("   %.0f calls/s, p50 %.2f ms, p99 %.2f ms" % (r["calls_per_s"], r["p50_ms"], r["p99_ms"]))
                runs.append(r)
            srv.stop()
            srv.result(60)
            shutil.rmtree(store_dir(sid), ignore_errors=True)
        # raw Paho QoS 2 ping-pong, as Paho leaves its socket (no TCP_NODELAY)
        base = "bench/" + uid("pp")
        echo = Proc([BIN, "paho-echo", "--broker", broker.uri, "--id", uid("echo"), "--topic", base], uid("echo"))
        echo.wait_line("ready", 30)
        log("raw Paho QoS 2 ping-pong x %d (run %d)" % (plan["ping"], rep + 1))
        r = Proc([BIN, "paho-ping", "--broker", broker.uri, "--id", uid("ping"), "--topic", base, "--count",
                  str(plan["ping"])], uid("ping")).result(600)
        log("   p50 %.2f ms, p99 %.2f ms" % (r["p50_ms"], r["p99_ms"]))
        r.update(durability="paho")
        runs.append(r)
        echo.stop()
        echo.p.wait(30)
    res["rtt"] = runs


# Commands at scale (process durability): a handler that takes 10 ms, served one call at a time and 8 at
# once, with 8 caller processes making one call at a time each; and one caller keeping 64 calls
# outstanding against a handler that takes no time. The bound of the first: 8 calls in flight, each
# 10 ms, allow 800 calls/s.
CALLERS = 8
DELAY_MS = 10


def scenario_calls(broker, plan, res):
    runs = []
    for rep in range(plan["repeat"]):
        for concurrency, results in ((1, "shared"), (CALLERS, "shared"), (CALLERS, "per-client")):
            command = "bench/" + uid("slow")
            srv, sid = start_server(broker, command, "process", delay_ms=DELAY_MS, concurrency=concurrency)
            srv.wait_line("ready", 60)
            log("calls: %d ms handler, concurrency %d, %d callers x %d calls, %s results (run %d)" % (
                DELAY_MS, concurrency, CALLERS, plan["calls"], results, rep + 1))
            procs = []
            for _ in range(CALLERS):
                cid = uid("call")
                procs.append((Proc([BIN, "call", "--broker", broker.uri, "--id", cid, "--dir", store_dir(cid),
                                    "--command", command, "--durability", "process", "--outstanding", "1",
                                    "--count", str(plan["calls"]), "--warmup", "5", "--results", results], cid), cid))
            rs = []
            for p, cid in procs:
                rs.append(p.result(1800))
                shutil.rmtree(store_dir(cid), ignore_errors=True)
            srv.stop()
            srv.result(60)
            shutil.rmtree(store_dir(sid), ignore_errors=True)
            # The callers run side by side: their rates add up.
            total = sum(r["calls_per_s"] for r in rs)
            log("   %.0f calls/s in all (p50 %.1f ms)" % (total, med([r["p50_ms"] for r in rs])))
            # Results each caller received and committed, against the calls it made.
            delivered = med([r.get("delivered", 0) / float(plan["calls"] + 5) for r in rs])
            runs.append({"kind": "slow", "concurrency": concurrency, "results": results, "callers": CALLERS,
                         "delay_ms": DELAY_MS, "count": plan["calls"], "calls_per_s": total,
                         "p50_ms": med([r["p50_ms"] for r in rs]), "p99_ms": max(r["p99_ms"] for r in rs),
                         "delivered_per_call": delivered})
        command = "bench/" + uid("many")
        srv, sid = start_server(broker, command, "process")
        srv.wait_line("ready", 60)
        log("calls: one caller, 64 outstanding x %d (run %d)" % (plan["calls_many"], rep + 1))
        r = call_run(broker, command, "process", 64, plan["calls_many"], results="per-client")
        log("   %.0f calls/s, p50 %.2f ms" % (r["calls_per_s"], r["p50_ms"]))
        runs.append({"kind": "outstanding", "outstanding": 64, "count": plan["calls_many"],
                     "calls_per_s": r["calls_per_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"]})
        srv.stop()
        srv.result(60)
        shutil.rmtree(store_dir(sid), ignore_errors=True)
    res["calls"] = runs


def scenario_memory(plan, res):
    port = free_port()
    broker = Broker(OUT_TMP, port)
    mid = uid("mem")
    log("memory: queue %d events with the broker down" % plan["mem"])
    p = Proc([BIN, "memory", "--broker", broker.uri, "--id", mid, "--dir", store_dir(mid), "--count",
              str(plan["mem"])], mid)
    p.wait_line("queued", 1800)
    log("memory: queued; broker up, draining")
    broker.start()
    r = p.result(3600)
    broker.stop()
    shutil.rmtree(store_dir(mid), ignore_errors=True)
    log("   peak RSS %.1f MiB (anon %.1f, file %.1f), drained at %.0f msg/s" % (
        max(r["queued_peak_hwm_kib"], r["drain_peak_hwm_kib"]) / 1024, max(r["queued_peak_anon_kib"], r["drain_peak_anon_kib"]) / 1024,
        max(r["queued_peak_file_kib"], r["drain_peak_file_kib"]) / 1024, r["drain_msgs_per_s"]))
    cost = Proc([BIN, "promise-cost", "--count", str(plan["mem"])], uid("cost")).result(300)
    res["memory"] = {"run": r, "promise_cost": cost, "broker_errors": broker.errors()}


def scenario_recovery(broker, plan, res):
    runs = []
    for rep in range(plan["repeat"]):
        rid = uid("rec")
        dead = "tcp://127.0.0.1:%d" % free_port()
        log("recovery: fill %d pending (run %d)" % (plan["rec"], rep + 1))
        Proc([BIN, "recover-fill", "--broker", dead, "--id", rid, "--dir", store_dir(rid), "--count",
              str(plan["rec"])], rid + "-fill").result(1800)
        r = Proc([BIN, "recover-run", "--broker", broker.uri, "--id", rid, "--dir", store_dir(rid)],
                 rid + "-run").result(1800)
        shutil.rmtree(store_dir(rid), ignore_errors=True)
        log("   first completed publish after %.0f ms, drained after %.0f ms" % (r["first_complete_ms"], r["drained_ms"]))
        runs.append(r)
    res["recovery"] = runs


def scenario_scaling(broker, plan, res):
    runs = []
    for rep in range(plan["repeat"]):
        for durability in ("fsync", "process"):
            for k in range(1, plan["scale_max"] + 1):
                command = "bench/" + uid("scale")
                servers = [start_server(broker, command, durability, group="g") for _ in range(k)]
                for s, _ in servers:
                    s.wait_line("ready", 60)
                log("scaling: %d servers, %s (run %d)" % (k, durability, rep + 1))
                r = call_run(broker, command, durability, 256, plan["scale"])
                served = []
                for s, sid in servers:
                    s.stop()
                    served.append(s.result(60)["served"])
                    shutil.rmtree(store_dir(sid), ignore_errors=True)
                r.update(servers=k, durability=durability, served=served)
                log("   %.0f calls/s (served per server: %s)" % (r["calls_per_s"], served))
                runs.append(r)
    res["scaling"] = runs


# The original JavaScript library, re-created in bench/xy-mqtt/peer.mjs (optional: --only xy-mqtt; needs node
# and `npm ci --prefix bench/xy-mqtt`, which scripts/bench runs when the scenario is asked for).
XY_MQTT_DIR = os.path.join(ROOT, "bench", "xy-mqtt")


def xy_mqtt_missing():
    """Why the xy-mqtt peer cannot run here, or None."""
    node = shutil.which("node")
    if not node:
        return "node not found on PATH"
    for mod in ("mqtt", "better-sqlite3"):
        if not os.path.isdir(os.path.join(XY_MQTT_DIR, "node_modules", mod)):
            return "bench/xy-mqtt/node_modules/%s missing (run: npm ci --prefix bench/xy-mqtt)" % mod
    r = subprocess.run([node, "-e", "require('better-sqlite3')(':memory:').close()"], cwd=XY_MQTT_DIR,
                       capture_output=True, text=True)
    if r.returncode != 0:
        return "better-sqlite3 does not load: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    return None


def xy_mqtt_proc(mode, name, flags):
    return Proc([shutil.which("node"), os.path.join(XY_MQTT_DIR, "peer.mjs"), mode, "--id", name, "--dir", store_dir(name)]
                + flags, name)


def scenario_xy_mqtt(broker, plan, res):
    """xy-mqtt's design (mqtt.js, QoS 2, clean:false, better-sqlite3 packet store, WAL + synchronous=EXTRA):
    100-byte events end to end, and sequential command calls. Counts: the fsync event count of the plan and
    the plan's sequential call count."""
    why = xy_mqtt_missing()
    if why:
        log("xy-mqtt: skipped: " + why)
        res["xy_mqtt"] = {"skipped": why}
        return
    events, rtt = [], []
    n_ev = max(20, int(plan["ev"][100] * plan["fsync_factor"]))
    for rep in range(plan["repeat"]):
        topic = "bench/" + uid("jsevt")
        sid, pid = uid("jssub"), uid("jspub")
        common = ["--broker", broker.uri, "--topic", topic, "--count", str(n_ev), "--size", "100"]
        log("xy-mqtt events 100 B x %d (run %d)" % (n_ev, rep + 1))
        sub = xy_mqtt_proc("sub", sid, common)
        sub.wait_line("ready", 60)
        pr = xy_mqtt_proc("pub", pid, common).result(1800)
        sr = sub.result(1800)
        for d in (store_dir(sid), store_dir(pid)):
            shutil.rmtree(d, ignore_errors=True)
        events.append({"config": "xy_mqtt_sqlite_extra", "size": 100, "count": n_ev, "e2e_msgs_per_s": sr["msgs_per_s"],
                       "pub_msgs_per_s": pr["pub_msgs_per_s"], "lat_p50_ms": sr["lat_p50_ms"],
                       "lat_p99_ms": sr["lat_p99_ms"], "complete": sr["complete"], "duplicates": sr["duplicates"]})
        log("   %.0f msg/s end to end" % sr["msgs_per_s"])
        command = "bench/" + uid("jscmd")
        vid = uid("jssrv")
        srv = xy_mqtt_proc("serve", vid, ["--broker", broker.uri, "--command", command])
        srv.wait_line("ready", 60)
        cid = uid("jscall")
        log("xy-mqtt commands, 1 outstanding x %d (run %d)" % (plan["rtt"], rep + 1))
        r = xy_mqtt_proc("call", cid, ["--broker", broker.uri, "--command", command, "--outstanding", "1",
                                    "--count", str(plan["rtt"]), "--warmup", "50"]).result(1800)
        srv.stop()
        r["served"] = srv.result(60)["served"]
        for d in (store_dir(vid), store_dir(cid)):
            shutil.rmtree(d, ignore_errors=True)
        log("   %.0f calls/s, p50 %.2f ms, p99 %.2f ms" % (r["calls_per_s"], r["p50_ms"], r["p99_ms"]))
        rtt.append(r)
    res["xy_mqtt"] = {"events": events, "rtt": rtt}


# --------------------------------------------------------------------------------------------------
# summary and docs

# Per message, from event_run: each process's CPU (us) and context switches, the broker's CPU (us).
CPU_KEYS = ("pub_cpu_us", "sub_cpu_us", "broker_cpu_us", "pub_switches", "sub_switches")


def med(xs):
    return statistics.median(xs) if xs else 0.0


def summarize(res):
    s = {}
    js_ev = (res.get("xy_mqtt") or {}).get("events")
    if js_ev:
        s["xy_mqtt_e2e"] = med([r["e2e_msgs_per_s"] for r in js_ev])
    disk = res.get("disk", [])
    if disk:
        s["disk"] = {k: med([d[k] for d in disk]) for k in
                     ("fdatasync_per_s", "lmdb_fsync_commits_per_s", "lmdb_journal_commits_per_s", "sqlite_fsync_commits_per_s",
                      "lmdb_process_commits_per_s") if all(k in d for d in disk)}
    ev = {}
    for r in res.get("events", []):
        ev.setdefault((r["config"], r["size"]), []).append(r)
    s["events"] = []
    for (cfg, size), rs in sorted(ev.items(), key=lambda kv: (kv[0][1], [c[0] for c in EVENT_CONFIGS].index(kv[0][0]))):
        e2e = [r["e2e_msgs_per_s"] for r in rs]
        s["events"].append({"config": cfg, "size": size, "count": rs[0]["count"], "runs": len(rs),
                            "median": med(e2e), "best": max(e2e), "all": e2e,
                            "lat_p50_ms": med([r["lat_p50_ms"] for r in rs]),
                            "pub_median": med([r["pub_msgs_per_s"] for r in rs]),
                            "complete": all(r["complete"] for r in rs)})
        for k in CPU_KEYS:
            if all(k in r for r in rs):
                s["events"][-1][k] = med([r[k] for r in rs])
    s["events_inflight20"] = []
    iv = {}
    for r in res.get("events_inflight20", []):
        iv.setdefault(r["config"], []).append(r)
    for cfg, rs in iv.items():
        e2e = [r["e2e_msgs_per_s"] for r in rs]
        s["events_inflight20"].append({"config": cfg, "size": 100, "count": rs[0]["count"], "runs": len(rs),
                                       "median": med(e2e), "best": max(e2e), "pub_median": med([r["pub_msgs_per_s"] for r in rs]),
                                       "lat_p50_ms": med([r["lat_p50_ms"] for r in rs]), "complete": all(r["complete"] for r in rs)})
    rt = {}
    for r in res.get("rtt", []):
        rt.setdefault((r["durability"], r.get("outstanding", 1)), []).append(r)
    s["rtt"] = []
    for (d, o), rs in rt.items():
        s["rtt"].append({"durability": d, "outstanding": o, "runs": len(rs), "count": rs[0]["count"],
                         "calls_per_s": med([r.get("calls_per_s", 0) for r in rs]),
                         "p50_ms": med([r["p50_ms"] for r in rs]), "p99_ms": med([r["p99_ms"] for r in rs])})
    sc = {}
    for r in res.get("scaling", []):
        sc.setdefault((r["durability"], r["servers"]), []).append(r)
    s["scaling"] = [{"durability": d, "servers": k, "calls_per_s": med([r["calls_per_s"] for r in rs]),
                     "best": max(r["calls_per_s"] for r in rs), "count": rs[0]["count"], "served": rs[0]["served"]}
                    for (d, k), rs in sorted(sc.items())]
    cl = {}
    for r in res.get("calls", []):
        cl.setdefault((r["kind"], r.get("concurrency", 0), r.get("results", "")), []).append(r)
    s["calls"] = [dict(rs[0], calls_per_s=med([r["calls_per_s"] for r in rs]), p50_ms=med([r["p50_ms"] for r in rs]),
                       p99_ms=med([r["p99_ms"] for r in rs]), runs=len(rs)) for _, rs in sorted(cl.items())]
    rec = res.get("recovery", [])
    if rec:
        s["recovery"] = {k: med([r[k] for r in rec]) for k in
                         ("pending", "open_ms", "connected_ms", "first_send_ms", "first_complete_ms", "drained_ms",
                          "drain_msgs_per_s")}
        s["recovery"]["runs"] = len(rec)
    return s


def cpu_total(e):
    """CPU per message, us: publisher, subscriber and broker together."""
    return e["pub_cpu_us"] + e["sub_cpu_us"] + e["broker_cpu_us"]


def ev_value(s, cfg, size):
    for e in s["events"]:
        if e["config"] == cfg and e["size"] == size:
            return e
    return None


def targets(s):
    out = []
    bound = s.get("disk", {}).get("lmdb_fsync_commits_per_s")

    def add(name, value, target, ok, how):
        out.append({"target": name, "value": value, "goal": target, "met": None if ok is None else bool(ok), "how": how})

    f = ev_value(s, "xy_lmdb_fsync", 100)
    fds = s.get("disk", {}).get("fdatasync_per_s")
    if f and fds:
        add("fsync events >= 0.8x the fdatasync rate", "%.0f msg/s = %.2fx of %.0f" % (f["median"], f["median"] / fds, fds),
            ">= 0.8x", f["median"] >= 0.8 * fds,
            "median e2e vs pwrite + fdatasync of 150 B on the stores' filesystem, same run (one sync per message as if each arrived alone)")
    u = ev_value(s, "xy_lmdb_ungrouped_fsync", 100)
    if f and u:
        add("fsync events, arrivals grouped vs not grouped (group_arrivals)", "%.0f vs %.0f msg/s = %.2fx" % (
            f["median"], u["median"], f["median"] / u["median"]), "-", None, "medians, 100 B, same run")
    if u and fds:
        add("fsync events, arrivals not grouped (as over TLS) vs the fdatasync rate", "%.0f msg/s = %.2fx of %.0f" % (
            u["median"], u["median"] / fds, fds), "-", None, "one synced commit and one broker round trip per message")
    for key, what in (("paho_sync_rm1_fsync", "receive maximum 1, the window of xymqtt's ungrouped arrivals"),
                      ("paho_sync_fsync", "Paho's window")):
        b = ev_value(s, key, 100)
        if f and b:
            add("fsync events vs raw Paho + one fdatasync per message (%s)" % what, "%.0f vs %.0f msg/s = %.2fx" % (
                f["median"], b["median"], f["median"] / b["median"]), ">= 0.8x" if key == "paho_sync_rm1_fsync" else "-",
                f["median"] >= 0.8 * b["median"] if key == "paho_sync_rm1_fsync" else None,
                "the most a subscriber on Paho's receive path does with one synced write per message: medians, 100 B")
        if b and fds:
            add("raw Paho + one fdatasync per message (%s) vs the fdatasync rate" % what, "%.0f msg/s = %.2fx of %.0f" % (
                b["median"], b["median"] / fds, fds), "-", None,
                "where Paho's receive path itself stands against the disk: see Findings (F22)")
    if f and bound:
        add("fsync events vs LMDB's single-put synced commit (two syncs)", "%.0f msg/s = %.2fx of %.0f" % (
            f["median"], f["median"] / bound, bound), "-", None,
            "the bound of earlier versions of this page: LMDB with default flags, journal off")
        add("fsync events >= 5x xy-mqtt (780 msg/s)", "%.0f msg/s = %.1fx" % (f["median"], f["median"] / XY_MQTT_MSGS_PER_S),
            ">= 3900 msg/s", f["median"] >= 5 * XY_MQTT_MSGS_PER_S, "xy-mqtt's recorded figure")
        if s.get("xy_mqtt_e2e"):
            add("fsync events >= 5x xy-mqtt's design, same run", "%.0f vs %.0f msg/s = %.1fx" % (
                f["median"], s["xy_mqtt_e2e"], f["median"] / s["xy_mqtt_e2e"]), ">= 5x", f["median"] >= 5 * s["xy_mqtt_e2e"],
                "bench/xy-mqtt/peer.mjs (mqtt.js + better-sqlite3, synchronous=EXTRA), median e2e")
    p = ev_value(s, "xy_lmdb_process", 100)
    q = ev_value(s, "paho_qos2", 100)
    if p and q:
        add("process events >= 1.0x raw Paho QoS 2", "%.0f vs %.0f msg/s = %.2fx" % (p["median"], q["median"], p["median"] / q["median"]),
            ">= 1.0x", p["median"] >= q["median"], "medians, 100 B, same run")
    qq = ev_value(s, "paho_qos2_quiet", 100)
    if p and qq:
        add("process events vs raw Paho QoS 2 with Paho's trace at errors", "%.0f vs %.0f msg/s = %.2fx" % (
            p["median"], qq["median"], p["median"] / qq["median"]), "-", None,
            "not the issue's baseline: raw Paho driven as xymqtt drives it (F19)")
    pr = ev_value(s, "paho_qos2_records", 100)
    if p and pr:
        add("process events vs raw Paho QoS 2 doing its own persistence work (records in memory)",
            "%.0f vs %.0f msg/s = %.2fx" % (p["median"], pr["median"], p["median"] / pr["median"]), "-", None,
            "Paho's records in a map: what Paho itself costs a persistent client, with no store behind it")
    if p and q and all(k in p and k in q for k in CPU_KEYS):
        tp, tq = cpu_total(p), cpu_total(q)
        add("process events, CPU per message (publisher + subscriber + broker) vs raw Paho QoS 2",
            "%.0f vs %.0f us = %.2fx" % (tp, tq, tp / tq), "-", None,
            "medians, 100 B, same run; on 2 cores throughput follows it (section 1, where the time goes)")
    for cfg, goal in (("xy_lmdb_process", 0.8), ("xy_lmdb_fsync", None)):
        x, r = ev_value(s, cfg, 65536), ev_value(s, "paho_qos2", 65536)
        if x and r:
            add("64 KiB events, %s durability%s" % (cfg.rsplit("_", 1)[1], " >= %.1fx raw Paho QoS 2" % goal if goal else
                                                      " vs raw Paho QoS 2"),
                "%.0f vs %.0f msg/s = %.2fx" % (x["median"], r["median"], x["median"] / r["median"]),
                ">= %.1fx" % goal if goal else "-", x["median"] >= goal * r["median"] if goal else None,
                "medians, 64 KiB payloads, same run")
    for r in s.get("rtt", []):
        if r["outstanding"] != 1:
            continue
        if r["durability"] == "fsync":
            add("RTT fsync p50 <= 1 ms", "%.2f ms" % r["p50_ms"], "<= 1 ms", r["p50_ms"] <= 1, "sequential call_async, binary")
            add("RTT fsync p99 <= 3 ms", "%.2f ms" % r["p99_ms"], "<= 3 ms", r["p99_ms"] <= 3, "sequential call_async, binary")
        if r["durability"] == "fsync-ungrouped":
            add("RTT fsync p50, arrivals not grouped (group_arrivals = false on both sides)", "%.2f ms" % r["p50_ms"], "-",
                None, "sequential call_async, binary")
        if r["durability"] == "process":
            add("RTT process p50 <= 1 ms", "%.2f ms" % r["p50_ms"], "<= 1 ms", r["p50_ms"] <= 1, "sequential call_async, binary")
    for c in s.get("calls", []):
        if c["kind"] == "slow" and c["concurrency"] == CALLERS and c["results"] == "per-client":
            add("results each caller commits: only its own calls'", "%.2f results per call made" % c["delivered_per_call"],
                "1 (shared topics: %d)" % CALLERS, abs(c["delivered_per_call"] - 1) < 0.05,
                "per-client result topics, %d callers" % CALLERS)
            allow = CALLERS * 1000.0 / DELAY_MS
            add("%d ms handler, %d callers >= 0.6x what %d calls in flight allow" % (DELAY_MS, CALLERS, CALLERS),
                "%.0f calls/s = %.2fx of %.0f" % (c["calls_per_s"], c["calls_per_s"] / allow, allow), ">= 480 calls/s",
                c["calls_per_s"] >= 0.6 * allow,
                "concurrency %d, per-client results, process durability, callers' rates added" % CALLERS)
        if c["kind"] == "outstanding":
            add("64 calls outstanding from one caller >= 2,000 calls/s", "%.0f calls/s" % c["calls_per_s"],
                ">= 2,000 calls/s", c["calls_per_s"] >= 2000,
                "handler without delay, concurrency 1, per-client results, process durability")
    m = s.get("memory_run")
    if m:
        peak = max(m["queued_peak_hwm_kib"], m["drain_peak_hwm_kib"]) / 1024
        add("RSS <= 32 MiB with %d queued" % m["count"], "%.1f MiB peak (VmHWM)" % peak, "<= 32 MiB", peak <= 32,
            "sampled every 20 ms, queueing and draining")
    rc = s.get("recovery")
    if rc:
        add("recovery of %d pending starts <= 1 s" % rc["pending"], "%.0f ms to first completed publish" % rc["first_complete_ms"],
            "<= 1000 ms", rc["first_complete_ms"] <= 1000, "from process start")
    return out


LABEL = {k: l for k, l, _, _ in EVENT_CONFIGS}
# Labels short enough for the chart's axis.
CHART_LABEL = {"xy_lmdb_fsync": "xymqtt LMDB fsync", "xy_lmdb_process": "xymqtt LMDB process",
               "xy_lmdb_ungrouped_fsync": "xymqtt LMDB fsync, not grouped",
               "xy_sqlite_fsync": "xymqtt SQLite fsync", "paho_qos2": "Paho QoS 2",
               "paho_qos2_quiet": "Paho QoS 2, trace at errors", "paho_qos2_records": "Paho QoS 2, records in memory",
               "paho_qos1": "Paho QoS 1",
               "paho_sync_rm1_fsync": "Paho QoS 2 + fdatasync, RM 1", "paho_sync_fsync": "Paho QoS 2 + fdatasync"}


def render_chart(s, outdir):
    """docs/benchmarks/throughput.png with gnuplot (pngcairo): e2e throughput per config and payload size."""
    gp = shutil.which("gnuplot")
    if not gp:
        log("gnuplot not found: no chart")
        return None
    if not s.get("events") or not s.get("rtt"):
        # A run with --only that left out events or RTT: gnuplot fails on an empty data file.
        log("no event or RTT results in this run: no charts")
        return None
    sizes = sorted({e["size"] for e in s["events"]})
    dat = os.path.join(outdir, "throughput.dat")
    with open(dat, "w") as f:
        f.write("config " + " ".join("%dB" % z for z in sizes) + "\n")
        for key, label, _, _ in EVENT_CONFIGS:
            vals = []
            for z in sizes:
                e = ev_value(s, key, z)
                vals.append("%.0f" % e["median"] if e else "0")
            f.write('"%s" %s\n' % (CHART_LABEL.get(key, label), " ".join(vals)))
    png = os.path.join(outdir, "throughput.png")
    bound = s.get("disk", {}).get("fdatasync_per_s", 0)
    script = """
set terminal pngcairo size 1100,650 font "sans,10"
set output '%s'
set xtics rotate by -30
set title "End-to-end event throughput (median of runs; loopback Mosquitto, separate processes)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y
set yrange [10:*]
set ylabel "messages/s (log scale)"
set grid ytics
set key top right
set xtics nomirror
%s
plot for [i=2:%d] '%s' using i:xtic(1) title columnhead(i)%s
""" % (png, ('set arrow from graph 0, first %f to graph 1, first %f nohead dt 2 lc rgb "red"\n'
             'set label "disk bound: fdatasync/s (%.0f)" at graph 0.01, first %f offset 0,0.7 tc rgb "red"'
             % (bound, bound, bound, bound)) if bound else "", len(sizes) + 1, dat, "")
    subprocess.run([gp], input=script, text=True, check=True)
    # Second chart: command round trips.
    png2 = os.path.join(outdir, "commands.png")
    dat2 = os.path.join(outdir, "commands.dat")
    rows = [r for r in s["rtt"] if r["durability"] in ("fsync", "process")]
    with open(dat2, "w") as f:
        f.write("outstanding fsync process\n")
        for o in (1, 16, 256):
            vals = []
            for d in ("fsync", "process"):
                v = [r["calls_per_s"] for r in rows if r["durability"] == d and r["outstanding"] == o]
                vals.append("%.0f" % (v[0] if v else 0))
            f.write('"%d outstanding" %s\n' % (o, " ".join(vals)))
    script2 = """
set terminal pngcairo size 800,450 font "sans,10"
set output '%s'
set title "Command calls/s (median), one server process"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set ylabel "calls/s"
set grid ytics
set yrange [0:*]
plot for [i=2:3] '%s' using i:xtic(1) title columnhead(i)
""" % (png2, dat2)
    subprocess.run([gp], input=script2, text=True, check=True)
    return ["benchmarks/throughput.png", "benchmarks/commands.png"]


def machine_info():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for l in f:
                if l.startswith("model name"):
                    cpu = l.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    fs = subprocess.run(["df", "-T", OUT_TMP], capture_output=True, text=True).stdout.splitlines()[-1].split()
    mosq = subprocess.run(["bash", "-c", "mosquitto -h 2>&1 | head -1"], capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "fs": fs[1] if len(fs) > 1 else "?",
            "mosquitto": mosq, "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}


def fmt(v, d=0):
    return ("{:,.%df}" % d).format(v)


def findings_section(path):
    """The section '## Findings' of docs/benchmarks.md. It is written by hand (what the profiler showed,
    what changed, before/after figures) and kept as it is when the file is rewritten."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    a = text.find("\n## Findings\n")
    if a < 0:
        return ""
    b = text.find("\n## How to run", a + 1)
    return (text[a + 1:b] if b > 0 else text[a + 1:]).rstrip()


def render_md(res, s, charts, path, findings_path):
    findings = findings_section(findings_path)  # read before `path` (maybe the same file) is rewritten
    m = res["machine"]
    L = []
    L.append("# Benchmarks")
    L.append("")
    L.append("Measured by `scripts/bench%s` on %s: %s, %d cores (shared with other jobs: numbers are noisy, so every "
             "comparison is against baselines measured in the same run), Linux %s, store filesystem %s, %s. "
             "Loopback Mosquitto from `config/mosquitto/mosquitto.conf`%s; publisher and subscriber (caller and "
             "server) always run as separate processes. Raw figures: `docs/benchmarks/results.json`."
             % (" --quick" if res["plan"] == "quick" else "", m["date"], m["cpu"], m["cores"], m["kernel"], m["fs"],
                m["mosquitto"], (" plus `" + BENCH_BROKER_EXTRA + "`") if BENCH_BROKER_EXTRA else " unchanged"))
    L.append("")
    L.append("Each figure is the median of %d run(s) (event throughput: %d), best in brackets where it matters; runs "
             "interleaved." % (res["repeat"], res.get("ev_repeat", res["repeat"])))
    L.append("")
    L.append("## Targets")
    L.append("")
    L.append("| target | measured | goal | met |")
    L.append("|---|---|---|---|")
    for t in res["targets"]:
        L.append("| %s | %s | %s | %s |" % (t["target"], t["value"], t["goal"], "-" if t["met"] is None else "yes" if t["met"] else "**no**"))
    L.append("")
    if "disk" in s:
        d = s["disk"]
        L.append("## The disk bound (same filesystem, same run)")
        L.append("")
        L.append("One 150-byte put per transaction, as the receive callback commits one message at a time:")
        L.append("")
        L.append("| what | per second |")
        L.append("|---|---|")
        L.append("| **the bound**: `fdatasync` of a 150-byte overwrite (preallocated file): one sync per message | %s |" % fmt(d["fdatasync_per_s"]))
        L.append("| LMDB, default flags (two syncs per commit: data pages, then meta page); the store with `journal_bytes = 0` | %s |" % fmt(d["lmdb_fsync_commits_per_s"]))
        if "lmdb_journal_commits_per_s" in d:
            L.append("| LMDB store as shipped, durability fsync (write-ahead journal: one `fdatasync` per commit) | %s |" % fmt(d["lmdb_journal_commits_per_s"]))
        L.append("| SQLite store, durability fsync (WAL, `synchronous=EXTRA`) | %s |" % fmt(d["sqlite_fsync_commits_per_s"]))
        L.append("| LMDB store as shipped, durability process (the journal through a shared mapping; `MDB_NOSYNC` checkpoints) | %s |" % fmt(d["lmdb_process_commits_per_s"]))
        L.append("")
    L.append("## 1. Event throughput, end to end")
    L.append("")
    L.append("Messages per second from the first publish to the last message handled by the subscriber (xymqtt: "
             "committed to its inbox and handled; the subscriber uses the same store and durability as the publisher). "
             "`publish` futures are dropped; the publisher waits for its outbox to drain.")
    L.append("")
    if charts:
        L.append("![throughput](%s)" % charts[0])
        L.append("")
    sizes = sorted({e["size"] for e in s["events"]})
    bound = s.get("disk", {}).get("fdatasync_per_s")
    for z in sizes:
        q2 = ev_value(s, "paho_qos2", z)
        L.append("### %s payloads" % ("%d B" % z if z < 1024 else "%d KiB" % (z // 1024)))
        L.append("")
        L.append("| configuration | messages | e2e msg/s (best) | vs raw Paho QoS 2 | vs fdatasync rate | publisher msg/s | latency p50 |")
        L.append("|---|---|---|---|---|---|---|")
        for key, label, _, _ in EVENT_CONFIGS:
            e = ev_value(s, key, z)
            if not e:
                continue
            vs_q2 = "%.2fx" % (e["median"] / q2["median"]) if q2 and q2["median"] else "-"
            vs_b = "%.2fx" % (e["median"] / bound) if bound and "fsync" in key else "-"
            L.append("| %s | %s | %s (%s) | %s | %s | %s | %.0f ms |" % (
                label, fmt(e["count"]), fmt(e["median"]), fmt(e["best"]), vs_q2, vs_b, fmt(e["pub_median"]),
                e["lat_p50_ms"]) + ("" if e["complete"] else " INCOMPLETE"))
        L.append("")
    cpu_rows = [e for e in s["events"] if all(k in e for k in CPU_KEYS)]
    if cpu_rows:
        L.append("### Where the time goes: CPU per message")
        L.append("")
        L.append("Each process's CPU (user and system, from its start to its exit: setup included) divided by the "
                 "messages, medians of the runs above; the broker's over the same run. Publisher, subscriber and "
                 "broker share %s cores, so when all three are busy the end-to-end rate cannot pass cores / total "
                 "CPU per message (last column but one): a configuration goes faster than another only by costing "
                 "less CPU per message." % res["machine"]["cores"])
        L.append("")
        L.append("| configuration | size | e2e msg/s | publisher us | subscriber us | broker us | total us | "
                 "vs raw Paho QoS 2 | cores / total | switches per message (pub / sub) |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for e in cpu_rows:
            q2 = ev_value(s, "paho_qos2", e["size"])
            t = cpu_total(e)
            vs = "%.2fx" % (t / cpu_total(q2)) if q2 and all(k in q2 for k in CPU_KEYS) else "-"
            L.append("| %s | %s | %s | %.0f | %.0f | %.0f | %.0f | %s | %s | %.2f / %.2f |" % (
                LABEL.get(e["config"], e["config"]), "%d B" % e["size"] if e["size"] < 1024 else
                "%d KiB" % (e["size"] // 1024), fmt(e["median"]), e["pub_cpu_us"], e["sub_cpu_us"],
                e["broker_cpu_us"], t, vs, fmt(res["machine"]["cores"] * 1e6 / t), e["pub_switches"],
                e["sub_switches"]))
        L.append("")
    if s.get("events_inflight20"):
        L.append("### 100 B payloads, broker with `%s` (benchmark-only setting, see Findings)" % INFLIGHT20)
        L.append("")
        L.append("Same programs and counts against a second broker whose config adds `%s`: the broker then keeps at "
                 "most 20 unacknowledged QoS 2 deliveries per subscriber (and announces Receive Maximum 20 to publishers)." % INFLIGHT20)
        L.append("")
        L.append("| configuration | messages | e2e msg/s (best) | vs raw Paho QoS 2 (this broker) | vs same config, project broker | vs fdatasync rate |")
        L.append("|---|---|---|---|---|---|")
        q2 = [e for e in s["events_inflight20"] if e["config"] == "paho_qos2"]
        for key, label, _, _ in EVENT_CONFIGS:
            e = [x for x in s["events_inflight20"] if x["config"] == key]
            if not e:
                continue
            e = e[0]
            base = ev_value(s, key, 100)
            L.append("| %s | %s | %s (%s) | %s | %s | %s |" % (
                label, fmt(e["count"]), fmt(e["median"]), fmt(e["best"]),
                "%.2fx" % (e["median"] / q2[0]["median"]) if q2 else "-",
                "%.2fx" % (e["median"] / base["median"]) if base else "-",
                "%.2fx" % (e["median"] / bound) if bound and "fsync" in key else "-"))
        L.append("")
    L.append("## 2. Command round trip")
    L.append("")
    L.append("`call_async` with the binary format against one server process (same durability on both sides); "
             "latency from the call to its result.")
    L.append("")
    if charts and len(charts) > 1:
        L.append("![commands](%s)" % charts[1])
        L.append("")
    L.append("| durability | outstanding | calls | calls/s | p50 | p99 |")
    L.append("|---|---|---|---|---|---|")
    for r in sorted(s["rtt"], key=lambda r: (r["durability"], r["outstanding"])):
        name = {"paho": "raw Paho QoS 2 ping-pong (no TCP_NODELAY)",
                "fsync-ungrouped": "xymqtt fsync, arrivals not grouped"}.get(r["durability"], "xymqtt " + r["durability"])
        L.append("| %s | %d | %s | %s | %.2f ms | %.2f ms |" % (name, r["outstanding"], fmt(r["count"]),
                                                              fmt(r["calls_per_s"]) if r["durability"] != "paho" else "%.1f" % (1000 / r["p50_ms"]),
                                                              r["p50_ms"], r["p99_ms"]))
    L.append("")
    js = res.get("xy_mqtt")
    if js:
        L.append("## The original library (JavaScript) in the same run")
        L.append("")
        if js.get("skipped"):
            L.append("Not measured: %s." % js["skipped"])
        else:
            L.append("`bench/xy-mqtt/peer.mjs`: xy-mqtt's design re-created (xy-mqtt is not on npm): mqtt.js, MQTT 3.1.1, "
                     "QoS 2, `clean: false`, its better-sqlite3 packet store (WAL, `synchronous=EXTRA`) as mqtt.js's "
                     "incoming and outgoing store, JSON payloads, TCP_NODELAY. Same broker; publisher and subscriber "
                     "(caller and server) in separate processes. xy-mqtt was recorded at %s msg/s elsewhere." % fmt(XY_MQTT_MSGS_PER_S))
            L.append("")
            L.append("| what | count | measured (median of %d) | xymqtt fsync, same run |" % max(len(js["events"]), 1))
            L.append("|---|---|---|---|")
            ev = js["events"]
            if ev:
                e2e = med([r["e2e_msgs_per_s"] for r in ev])
                x = ev_value(s, "xy_lmdb_fsync", 100)
                L.append("| 100 B events, e2e msg/s | %s | %s%s | %s |" % (
                    fmt(ev[0]["count"]), fmt(e2e), "" if all(r["complete"] for r in ev) else " INCOMPLETE",
                    "%s (%.1fx)" % (fmt(x["median"]), x["median"] / e2e) if x and e2e else "-"))
            rt = js["rtt"]
            if rt:
                x = [r for r in s.get("rtt", []) if r["durability"] == "fsync" and r["outstanding"] == 1]
                for k, name in (("p50_ms", "p50"), ("p99_ms", "p99")):
                    L.append("| sequential calls, RTT %s | %s | %.2f ms | %s |" % (
                        name, fmt(rt[0]["count"]), med([r[k] for r in rt]), "%.2f ms" % x[0][k] if x else "-"))
        L.append("")
    mem = res.get("memory")
    if mem:
        r = mem["run"]
        c = mem["promise_cost"]
        L.append("## 3. Memory with %s events queued offline" % fmt(r["count"]))
        L.append("")
        L.append("The publisher starts with its broker down, publishes %s 100-byte events (futures dropped), waits "
                 "until all are stored, then the broker is started and the outbox drains (no subscriber). RSS from "
                 "`/proc/self/status` sampled every 20 ms." % fmt(r["count"]))
        L.append("")
        L.append("| phase | VmRSS | VmHWM | RssAnon | RssFile (LMDB map pages) |")
        L.append("|---|---|---|---|---|")
        for ph, name in (("opened", "client open"), ("queued_peak", "peak while queueing"),
                         ("queued_now", "all stored, broker down"), ("drain_peak", "peak while draining"), ("end", "drained")):
            L.append("| %s | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB |" % (
                name, r[ph + "_rss_kib"] / 1024, r[ph + "_hwm_kib"] / 1024, r[ph + "_anon_kib"] / 1024, r[ph + "_file_kib"] / 1024))
        L.append("")
        L.append("Queueing: `publish` loop %.1f s, all stored after %.1f s. Drain: %.1f s (%s msg/s)." % (
            r["enqueue_s"], r["stored_s"], r["drain_s"], fmt(r["drain_msgs_per_s"])))
        L.append("")
        L.append("What a pending publish costs in memory: with `post` (as here), nothing per message: the outbox "
                 "keeps the sequence numbers of publishes waiting on disk as runs of consecutive numbers (16 bytes per "
                 "run), and queues at most 2 MiB of records for its next commit. With `publish`, the caller's future: "
                 "a `std::map<seq, std::shared_ptr<std::promise<void>>>` entry, %.0f bytes measured alone (`xybench "
                 "promise-cost`), %.0f MiB for %s pending publishes." % (
                     c["promise_map_bytes_each"], c["promise_map_bytes_each"] * c["count"] / 2**20, fmt(c["count"])))
        L.append("")
    rc = s.get("recovery")
    if rc:
        L.append("## 4. Recovery with %s pending publishes" % fmt(rc["pending"]))
        L.append("")
        L.append("A process stores %s 100-byte publishes with no broker reachable and exits; a new process opens the "
                 "same store with the broker up. Times from the new process's start (median of %d):" % (fmt(rc["pending"]), rc["runs"]))
        L.append("")
        L.append("| store opened | connected | first PUBLISH handed to Paho | first publish completed | outbox drained | drain rate |")
        L.append("|---|---|---|---|---|---|")
        L.append("| %.0f ms | %.0f ms | %.0f ms | %.0f ms | %.0f ms | %s msg/s |" % (
            rc["open_ms"], rc["connected_ms"], rc["first_send_ms"], rc["first_complete_ms"], rc["drained_ms"], fmt(rc["drain_msgs_per_s"])))
        L.append("")
    if s["scaling"]:
        L.append("## 5. Scaling: command servers in a share group")
        L.append("")
        L.append("One caller with 256 calls outstanding; 1 to %d server processes registered with `command_options::group` "
                 "(`$share/g/<command>/invoke`). All processes and the broker share the machine's %d cores." % (
                     max(r["servers"] for r in s["scaling"]), m["cores"]))
        L.append("")
        L.append("| durability | servers | calls | calls/s (best) | vs 1 server | calls served per server (first run) |")
        L.append("|---|---|---|---|---|---|")
        for r in s["scaling"]:
            one = [x for x in s["scaling"] if x["durability"] == r["durability"] and x["servers"] == 1]
            L.append("| %s | %d | %s | %s (%s) | %.2fx | %s |" % (r["durability"], r["servers"], fmt(r["count"]), fmt(r["calls_per_s"]),
                                                           fmt(r["best"]), r["calls_per_s"] / one[0]["calls_per_s"] if one else 0,
                                                           ", ".join(fmt(x) for x in r["served"])))
        L.append("")
    if s.get("calls"):
        L.append("## 6. Commands at scale: concurrent handlers, many calls outstanding")
        L.append("")
        L.append("Process durability. A handler that takes %d ms (it sleeps, as a call to a database waits), served "
                 "with `command_options::concurrency` 1 (the default) and %d, called by %d caller processes making "
                 "one call at a time each (their rates added). %d calls in flight, each %d ms, allow %s calls/s. "
                 "Then one caller keeping 64 calls outstanding against a handler that takes no time." % (
                     DELAY_MS, CALLERS, CALLERS, CALLERS, DELAY_MS, fmt(CALLERS * 1000.0 / DELAY_MS)))
        L.append("")
        L.append("| what | concurrency | results | calls per caller | calls/s | vs the bound | results committed per call | p50 | p99 |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for c in s["calls"]:
            if c["kind"] == "slow":
                L.append("| %d ms handler, %d callers | %d | %s | %s | %s | %.2fx | %.2f | %.1f ms | %.1f ms |" % (
                    c["delay_ms"], c["callers"], c["concurrency"], c["results"], fmt(c["count"]), fmt(c["calls_per_s"]),
                    c["calls_per_s"] / (CALLERS * 1000.0 / DELAY_MS), c["delivered_per_call"], c["p50_ms"], c["p99_ms"]))
            else:
                L.append("| 64 outstanding, one caller | 1 | per-client | %s | %s | - | - | %.2f ms | %.2f ms |" % (
                    fmt(c["count"]), fmt(c["calls_per_s"]), c["p50_ms"], c["p99_ms"]))
        L.append("")
    if findings:
        L.append(findings)
        L.append("")
    L.append("## How to run")
    L.append("")
    L.append("`scripts/bench` (full: about %s), `scripts/bench --quick` (a few minutes). It builds `build-bench/` "
             "(Release), installs gnuplot if it is missing, starts private brokers and rewrites this file, "
             "`docs/benchmarks/results.json` and the charts; the Findings section is written by hand and kept. "
             "A smoke run of every mode with tiny counts is the CTest test `bench/smoke` (label `bench`)." % "25 minutes")
    L.append("")
    with open(path, "w") as f:
        f.write("\n".join(L))


# --------------------------------------------------------------------------------------------------

def main():
    global BIN, OUT_TMP
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks"))
    ap.add_argument("--md", default=None, help="markdown to write (default: none for --smoke, docs/benchmarks.md otherwise)")
    ap.add_argument("--only", default="disk,events,inflight20,rtt,memory,recovery,scaling,calls")
    ap.add_argument("--repeat", type=int, default=0)
    ap.add_argument("--render-only", action="store_true", help="re-render the docs from --out/results.json")
    a = ap.parse_args()
    BIN = os.path.abspath(a.bin)
    if a.render_only:
        with open(os.path.join(a.out, "results.json")) as f:
            res = json.load(f)
        s = res["summary"]
        charts = render_chart(s, a.out)
        render_md(res, s, charts, a.md or os.path.join(ROOT, "docs", "benchmarks.md"), os.path.join(ROOT, "docs", "benchmarks.md"))
        return 0
    plan_name = "smoke" if a.smoke else "quick" if a.quick else "full"
    plan = dict(PLANS[plan_name])
    if a.repeat:
        plan["repeat"] = plan["ev_repeat"] = a.repeat
    os.makedirs(a.out, exist_ok=True)
    OUT_TMP = tempfile.mkdtemp(prefix="xybench.", dir=os.environ.get("XYBENCH_TMP", os.path.dirname(BIN)))
    only = a.only.split(",")
    res = {"plan": plan_name, "repeat": plan["repeat"], "plan_counts": {k: v for k, v in plan.items() if k != "ev"},
           "event_counts": {str(k): v for k, v in plan["ev"].items()}, "broker_extra": BENCH_BROKER_EXTRA}
    res["machine"] = machine_info()
    broker = Broker(OUT_TMP).start()
    ok = True
    try:
        if "disk" in only:
            scenario_disk(plan, res)
        if "events" in only:
            scenario_events(broker, plan, res)
        if "inflight20" in only:
            scenario_inflight20(plan, res)
        if "rtt" in only:
            scenario_rtt(broker, plan, res)
        if "memory" in only:
            scenario_memory(plan, res)
        if "recovery" in only:
            scenario_recovery(broker, plan, res)
        if "scaling" in only:
            scenario_scaling(broker, plan, res)
        if "calls" in only:
            scenario_calls(broker, plan, res)
        if "xy-mqtt" in only:
            scenario_xy_mqtt(broker, plan, res)
    finally:
        broker.stop()
        for p in CHILDREN:
            if p.poll() is None:
                p.kill()
                p.wait()
    res["broker_errors"] = broker.errors()
    s = summarize(res)
    if "memory" in res:
        s["memory_run"] = res["memory"]["run"]
    res["summary"] = s
    res["targets"] = targets(s)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    charts = None
    if not a.smoke:
        charts = render_chart(s, a.out)
    md = a.md or (None if a.smoke else os.path.join(ROOT, "docs", "benchmarks.md"))
    if md:
        render_md(res, s, charts, md, os.path.join(ROOT, "docs", "benchmarks.md"))
        log("wrote " + md)
    for t in res["targets"]:
        log("%-45s %-40s %s" % (t["target"], t["value"], "-" if t["met"] is None else "met" if t["met"] else "MISSED"))
    if res["broker_errors"]:
        log("broker errors: %s" % res["broker_errors"])
    shutil.rmtree(OUT_TMP, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
