"""Renders tests/bench/results.jsonl (written by run.sh) as the RESULTS.md tables."""

import json
import os
import platform
import sys


def machine():
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} × {model}, Linux {platform.release()}"


def fmt(value, digits=1):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    out = ["# Benchmark results", ""]
    out.append(f"Machine: {machine()}. Server pinned to CPU 0, load generator to CPU 1 (`taskset`).")
    out.append("Regenerate with `tests/bench/run.sh all` (about 15 minutes); raw lines are in `results.jsonl`.")
    out.append("")
    out.append("Caveat: one run per scenario so far (no repetitions or medians yet). On this VM the same scenario "
               "has varied by up to 2× between runs, above all the p99 < 50 ms boundary and the connect rate.")
    out.append("")

    fan = [r for r in rows if r["scenario"] in ("fanout", "many") and "steps" in r]
    if fan:
        out += ["## Fan-out", "",
                "Highest offered rate with zero loss, duplicates and reordering that the sender kept up with "
                "(`max clean`), and the highest that also had p99 < 50 ms (`max p99<50`). `floor` is the reference "
                "server (tokio + tungstenite, no protocol); the ratio is Spinwire's clean maximum over the floor's.", "",
                "| scenario | subs | protocol | server | max clean deliveries/s | p99 ms there | max p99<50 | server CPU s per 1M | loadgen CPU s per 1M | vs floor |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        floors = {(r["scenario"], r["subs"], r["protocol"]): r for r in fan if r["server"] == "floor"}
        for r in fan:
            clean = r.get("max_clean") or {}
            best = r.get("max") or {}
            ratio = "–"
            floor = floors.get((r["scenario"], r["subs"], r["protocol"]))
            if r["server"] != "floor" and floor and (floor.get("max_clean") or {}).get("deliveries_per_s"):
                ratio = f"{clean.get('deliveries_per_s', 0) / floor['max_clean']['deliveries_per_s']:.2f}"
            out.append(
                f"| {r['scenario']} | {fmt(r['subs'])} | {r['protocol']} | {r['server']} | "
                f"{fmt(clean.get('deliveries_per_s'), 0)} | {fmt(clean.get('p99_ms'))} | {fmt(best.get('deliveries_per_s'), 0)} | "
                f"{fmt(clean.get('server_cpu_s_per_1m'), 2)} | {fmt(clean.get('loadgen_cpu_s_per_1m'), 2)} | {ratio} |")
        out.append("")

    cross = [r for r in rows if r["scenario"] == "cross-node"]
    if cross:
        out += ["## Across nodes on Redis (publisher on node A, subscribers on node B)", "",
                "Two Spinwire nodes and one redis-server share CPU 0, the load generator has CPU 1. Channels keep "
                "history, so each publication runs the Lua publish script. CPU figures are Redis's.", "",
                "| publications/s | subscribers | deliveries/s | p50 ms | p99 ms | p99.9 ms | lost | Redis CPU µs per publication | publications per Redis CPU-second |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in cross:
            x = r["result"]
            per_pub_us = (x["server_cpu_s_per_1m"] or 0) * r["subs"]
            per_cpu_s = f"{fmt(1e6 / per_pub_us, 0)}" if per_pub_us else "-"
            out.append(f"| {fmt(x['target_deliveries_per_s'] / r['subs'], 0)} | {r['subs']} | {fmt(x['deliveries_per_s'], 0)} | "
                       f"{fmt(x['p50_ms'], 2)} | {fmt(x['p99_ms'], 2)} | {fmt(x['p999_ms'], 2)} | {x['lost']} | "
                       f"{fmt(per_pub_us, 0)} | {per_cpu_s} |")
        out.append("")

    lat = [r for r in rows if r["scenario"] == "fanout" and "result" in r]
    if lat:
        out += ["## Latency at fixed load (10k subscribers, JSON)", "",
                "| offered deliveries/s | delivered/s | p50 ms | p99 ms | p99.9 ms | max ms | lost | server CPU s per 1M |",
                "|---|---|---|---|---|---|---|---|"]
        for r in lat:
            x = r["result"]
            out.append(f"| {fmt(x['target_deliveries_per_s'], 0)} | {fmt(x['deliveries_per_s'], 0)} | {fmt(x['p50_ms'])} | "
                       f"{fmt(x['p99_ms'])} | {fmt(x['p999_ms'])} | {fmt(x['max_ms'])} | {x['lost']} | {fmt(x['server_cpu_s_per_1m'], 2)} |")
        out.append("")

    idle = [r for r in rows if r["scenario"] == "idle"]
    if idle:
        out += ["## Idle memory per WebSocket connection", "",
                "Server RSS growth divided by connections, after connect (+ subscribe) and a 2 s settle. Kernel socket "
                "memory (slab, both ends of each loopback connection) is reported separately.", "",
                "| connections | subscriptions each | server RSS per conn (KB) | kernel slab per conn pair (KB) | server RSS total (MB) |",
                "|---|---|---|---|---|"]
        for r in idle:
            out.append(f"| {fmt(r['conns'])} | {r['subscriptions_each']} | {fmt(r['server_rss_bytes_per_conn'] / 1024, 2)} | "
                       f"{fmt(r['kernel_slab_bytes_per_conn_both_ends'] / 1024, 2)} | {fmt(r['server_rss_total_mb'])} |")
        out.append("")

    # Connect and API figures: the latest run of each kind (results.jsonl accumulates runs).
    latest = {}
    for r in rows:
        if r["scenario"] in ("connect", "api"):
            latest[(r["scenario"], r.get("transport", "http"))] = r
    for r in latest.values():
        if r["scenario"] == "connect":
            out += ["## Connect rate", "",
                    f"{fmt(r['conns'])} clients (WebSocket upgrade + connect with a JWT + one subscribe): "
                    f"{r['seconds']:.2f} s, {fmt(r['connects_per_s'], 0)} per second.", ""]
        if r["scenario"] == "api":
            if r.get("transport", "http") == "http":
                how = f"HTTP `POST /api/publish`, {r['conns']} keep-alive connections"
            else:
                how = f"gRPC `CentrifugoApi/Publish`, {r['conns']} HTTP/2 connections × {r['streams']} streams"
            out += [f"## Server API publish rate over {r.get('transport', 'http')} (no subscribers)", "",
                    f"{how}, closed loop: "
                    f"{fmt(r['publishes_per_s'], 0)} publishes/s, {fmt(r['server_cpu_us_per_publish'])} µs server CPU each, "
                    f"{r['errors']} errors.", ""]
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
