//! The markdown table of ratios and a hand-written SVG plot.

use std::fmt::Write;

use crate::Lat;
use crate::contenders::{Emulation, Results};

fn find<'a, T>(v: &'a [(String, T)], prefix: &str) -> Option<&'a T> {
    v.iter()
        .find(|(n, _)| n.starts_with(prefix))
        .map(|(_, t)| t)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

/// The report.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Dataplane benchmark\n");
    let _ = writeln!(
        s,
        "Made by `cargo run --release -p nexus-dataplane-bench -- --out docs/bench` on a shared \
         2-core VM (loopback; servers on core 0, clients on core 1, link emulators unpinned; \
         current-thread runtimes; TCP_NODELAY; every TLS contender negotiates Nexus's cipher \
         suite, TLS_AES_128_GCM_SHA256). Absolute numbers are noisy on this machine; the ratios \
         are the point.\n"
    );
    let _ = writeln!(
        s,
        "{}\n",
        match &r.emulation {
            Emulation::Packets { device, .. } => format!(
                "Cold calls and head-of-line blocking cross a packet-level link emulator on a TUN \
                 device (`{device}`, MTU 1500): every contender's IP packets, UDP and TCP alike, \
                 are delayed and dropped there, and the kernel's TCP recovers from loss with its \
                 own retransmission and congestion control. The loss table and the long-path \
                 tensor (UDP only) use the user-space UDP emulator."
            ),
            Emulation::Proxies => "No TUN device could be made (run as root for one), so TCP \
                 contenders crossed a user-space proxy that models loss and delay, and UDP \
                 contenders the user-space UDP emulator."
                .to_owned(),
        }
    );
    let _ = writeln!(
        s,
        "## Warm unary call (1 KiB request, 4 KiB response, open loop at 2,000 calls/s, contenders interleaved in rounds)\n"
    );
    let _ = writeln!(
        s,
        "| contender | p50 µs | p99 µs | p99.9 µs | calls/s (16 in flight) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    for (n, l, t) in &r.unary {
        let _ = writeln!(
            s,
            "| {n} | {:.0} | {:.0} | {:.0} | {t:.0} |",
            l.p50, l.p99, l.p999
        );
    }
    let unary: Vec<(String, f64)> = r.unary.iter().map(|(n, l, _)| (n.clone(), l.p50)).collect();
    let rounds: Vec<(String, (f64, String))> = r
        .unary_round_ratios
        .iter()
        .map(|(n, m, all)| (n.clone(), (*m, all.clone())))
        .collect();
    for (peer, label, target) in [("gRPC", "gRPC", 0.7), ("HTTP/1.1", "HTTP/1.1+JSON", 0.5)] {
        if let (Some(n), Some(p), Some((median, all))) = (
            find(&unary, "Nexus"),
            find(&unary, peer),
            find(&rounds, peer),
        ) {
            let _ = writeln!(
                s,
                "\nNexus p50 / {label} p50: median of the per-round ratios **{median:.2}** \
                 (rounds: {all}), pooled {:.2}; target ≤ {target}: {}.",
                n / p,
                verdict(*median <= target)
            );
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "## Cold call over an emulated 20 ms RTT (new connection to first response)\n"
    );
    let _ = writeln!(s, "| variant | p50 ms | p99 ms |");
    let _ = writeln!(s, "|---|---:|---:|");
    for (n, l) in &r.cold {
        let _ = writeln!(s, "| {n} | {:.1} | {:.1} |", l.p50 / 1e3, l.p99 / 1e3);
    }
    let cold: Vec<(String, f64)> = r.cold.iter().map(|(n, l)| (n.clone(), l.p50)).collect();
    if let (Some(nf), Some(nr), Some(hf), Some(hr)) = (
        find(&cold, "Nexus, full"),
        find(&cold, "Nexus, resumed"),
        find(&cold, "HTTPS (TCP + TLS 1.3 full"),
        find(&cold, "HTTPS (TCP + TLS 1.3 resumed"),
    ) {
        let _ = writeln!(
            s,
            "\nWith resumption: Nexus 0-RTT / HTTPS resumed = **{:.3}** (target ≤ 1/3: {}). Without: Nexus full / HTTPS full = **{:.2}** (target ≤ 0.5: {}; QUIC needs 2 RTT for handshake + request against 3 for TCP + TLS 1.3 + request, so 0.67 is the protocol floor without 0-RTT).\n",
            nr / hr,
            verdict(nr / hr <= 1.0 / 3.0),
            nf / hf,
            verdict(nf / hf <= 0.5)
        );
        if let Some(qr) = find(&cold, "raw quinn, resumed") {
            let _ = writeln!(
                s,
                "The engine alone (raw quinn, the same mutual TLS 1.3 resumption, the request in 0-RTT) / HTTPS resumed = {:.3}, and Nexus / raw quinn = {:.2}. A 0-RTT call takes one round trip against HTTPS's three, so 1/3 is the floor, and a call stays under it only if all its processing, on both ends, takes under a third of HTTPS's.\n",
                qr / hr,
                nr / qr
            );
        }
    }
    let _ = writeln!(
        s,
        "## Token stream of 1,000 tokens (1 ms generation interval on both)\n"
    );
    let _ = writeln!(s, "| contender | inter-token p50 µs | p99 µs | p99.9 µs |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for (n, l) in &r.tokens {
        let _ = writeln!(s, "| {n} | {:.0} | {:.0} | {:.0} |", l.p50, l.p99, l.p999);
    }
    let _ = writeln!(
        s,
        "\n## Head-of-line blocking: 1 KiB calls (50/s) beside a 16 MiB transfer on the same connection, 2% loss, 15 ms RTT (one second per round, rounds alternating, samples pooled)\n"
    );
    let _ = writeln!(s, "| contender | small-call p50 ms | p90 ms | p99 ms |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for (n, l) in &r.hol {
        let _ = writeln!(
            s,
            "| {n} | {:.1} | {:.1} | {:.1} |",
            l.p50 / 1e3,
            l.p90 / 1e3,
            l.p99 / 1e3
        );
    }
    let hol: Vec<(String, Lat)> = r.hol.clone();
    if let (Some(nl), Some(gl)) = (find(&hol, "Nexus"), find(&hol, "gRPC")) {
        let _ = writeln!(
            s,
            "\nNexus / gRPC small-call latency: p50 {:.2}, p90 {:.2}.\n",
            nl.p50 / gl.p50.max(1.0),
            nl.p90 / gl.p90.max(1.0)
        );
        let [nb, bb, gb] = r.hol_bulk_mbps;
        let _ = writeln!(
            s,
            "The 16 MiB transfers beside the calls ran at {nb:.1} MB/s (Nexus, CUBIC), {bb:.1} MB/s (Nexus, BBR) and {gb:.1} MB/s (gRPC). Under 2% random loss a loss-based congestion controller (quinn's CUBIC, Nexus's default) holds about the Mathis bound, MSS/RTT × 1.22/√p ≈ 0.7–0.8 MB/s at 15–18 ms, so a transfer lasts the whole round and the calls share a window it keeps full; BBR paces at the measured path rate instead.{}\n",
            match &r.emulation {
                Emulation::Packets { tcp_congestion, .. } => {
                    let pct = |(s, d): (u64, u64)| {
                        format!("{d} of {s} ({:.2}%)", 100.0 * d as f64 / s.max(1) as f64)
                    };
                    let [n, b, g] = r.hol_packets.map(pct);
                    format!(
                        " gRPC's TCP ran the kernel's congestion controller, {tcp_congestion}{}. The emulator dropped {n} packets of Nexus (CUBIC), {b} of Nexus (BBR) and {g} of gRPC; the device's own queue, when the emulator fell behind, dropped {} more.",
                        if tcp_congestion == "bbr" {
                            ", which does not back off on random loss"
                        } else {
                            ""
                        },
                        r.hol_device_drops.map_or_else(
                            || "an unknown number".to_owned(),
                            |[n, b, g]| format!("{n}, {b} and {g} (in the same order)")
                        )
                    )
                }
                Emulation::Proxies => " The TCP proxy models loss as delay only, without a congestion response, so gRPC's transfer is not slowed by it.".to_owned(),
            }
        );
        if let Some(bl) = find(&hol, "Nexus with --congestion bbr") {
            let _ = writeln!(
                s,
                "With `--congestion bbr` (opt-in; quinn's BBR is experimental), Nexus small-call p99 / gRPC p99, pooled = {:.2}.\n",
                bl.p99 / gl.p99.max(1.0)
            );
        }
        let (n, g) = (nl.p99, gl.p99);
        let _ = writeln!(
            s,
            "\nNexus (the default, CUBIC) small-call p99 / gRPC p99, pooled = **{:.2}** (target ≤ 0.5: {}; per round, 50 samples each, so about the round's worst call: {}, median {:.2}).{}\n",
            n / g,
            verdict(n / g <= 0.5),
            r.hol_round_ratios
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            r.hol_round_ratios
                .get(r.hol_round_ratios.len() / 2)
                .copied()
                .unwrap_or(f64::NAN),
            match r.emulation {
                Emulation::Packets { .. } => format!(
                    " gRPC's calls wait behind the bulk bytes already in the TCP connection's send buffer, behind in-order delivery after each retransmission, and behind retransmission timeouts (200 ms minimum on Linux; {} during gRPC's rounds), so its tail varies from round to round. Nexus's calls ride their own streams ahead of the transfer's, and QUIC's probe timeout, which finds a lost last packet, follows the measured RTT plus the {} ms acknowledgement delay Nexus asks of its peer (`nexus_stream::MAX_ACK_DELAY`; QUIC's default is 25 ms).",
                    r.hol_tcp_timeouts
                        .map_or_else(|| "count unknown".to_owned(), |t| format!("{t} on this machine")),
                    nexus_stream::MAX_ACK_DELAY.as_millis()
                ),
                Emulation::Proxies =>
                    " TCP loss is modelled in the proxy (a segment lost with p = 2% delivers its chunk and everything behind it one RTT late: fast retransmit, never a timeout), which favours gRPC.".to_owned(),
            }
        );
    }
    if !r.far.is_empty() {
        let _ = writeln!(
            s,
            "\n## 16 MiB tensor over a 100 ms round trip to a receiver granting 1 MiB per stream (best of 2 rounds, alternating)\n"
        );
        let _ = writeln!(s, "| shards | MB/s |");
        let _ = writeln!(s, "|---|---:|");
        for (n, t) in &r.far {
            let _ = writeln!(s, "| {n} | {t:.1} |");
        }
        let _ = writeln!(
            s,
            "\nOne stream moves at most its window per round trip: 1 MiB / 100 ms ≈ 10 MB/s here, 8 MiB (the default) / 100 ms ≈ 84 MB/s on a real long path. `send_tensor` cuts tensors into one window per shard where that bound is below 10 Gb/s; the user-space link emulator itself tops out at a few tens of MB/s, which caps the second row.\n"
        );
    }
    let _ = writeln!(
        s,
        "\n## 64 MiB tensor (best of 3 rounds, contenders in a fresh random order each round)\n"
    );
    let _ = writeln!(s, "| contender | MB/s |");
    let _ = writeln!(s, "|---|---:|");
    for (n, t) in &r.tensor {
        let _ = writeln!(s, "| {n} | {t:.0} |");
    }
    if let (Some(n), Some(g), Some(t)) = (
        find(&r.tensor, "Nexus"),
        find(&r.tensor, "gRPC"),
        find(&r.tensor, "plaintext TCP"),
    ) {
        let _ = writeln!(
            s,
            "\nNexus / gRPC+TLS = **{:.2}** (target ≥ 1: {}); Nexus / plaintext TCP = **{:.2}**.\n",
            n / g,
            verdict(n / g >= 1.0),
            n / t
        );
    }
    let _ = writeln!(
        s,
        "## Loss: delivery and goodput per mode (link with 1 ms one-way delay)\n"
    );
    let _ = writeln!(s, "| mode | loss | delivered | goodput MB/s |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for (n, loss, d, g) in &r.loss {
        let _ = writeln!(
            s,
            "| {n} | {:.0}% | {:.1}% | {g:.2} |",
            loss * 100.0,
            d * 100.0
        );
    }
    let _ = writeln!(
        s,
        "\n## Handshakes per second (mutual TLS 1.3 over quinn, one core each side, measurements interleaved in rounds)\n"
    );
    let _ = writeln!(
        s,
        "| certificate | full /s | resumed /s | CPU µs per full | CPU µs per resumed |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    for (i, (n, f, rs)) in r.handshakes.iter().enumerate() {
        let (cf, cr) = (
            r.handshake_cpu_us.get(2 * i).copied().unwrap_or_default(),
            r.handshake_cpu_us
                .get(2 * i + 1)
                .copied()
                .unwrap_or_default(),
        );
        let _ = writeln!(s, "| {n} | {f:.0} | {rs:.0} | {cf:.0} | {cr:.0} |");
    }
    let rr = &r.handshake_round_ratios;
    if let Some(median) = rr.get(rr.len() / 2) {
        let shown: Vec<String> = rr.iter().map(|x| format!("{x:.2}")).collect();
        let [mf, _, pf, _] = r.handshake_cpu_us;
        let _ = writeln!(
            s,
            "\nMIC full-handshake cost relative to plain X.509, in CPU time (both ends): median of \
             the per-round ratios **{median:.2}×** (rounds: {}), pooled {:.2}×; target ≤ 1.2×: {}.\n",
            shown.join(", "),
            mf / pf.max(1.0),
            verdict(*median <= 1.2)
        );
    }
    let _ = writeln!(s, "## Not measured in this run\n");
    let _ = writeln!(
        s,
        "- A CPU profile of the tensor path: the shard-size rows above and ARCHITECTURE.md (Dataplane: where the time goes, GSO/GRO) say what was found instead."
    );
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    s
}

/// A bar chart of warm unary p50/p99 and cold-call p50.
pub fn svg(r: &Results) -> String {
    let mut s = String::new();
    let width = 900;
    let row = 26;
    let rows = r.unary.len() + r.cold.len() + 4;
    let height = 60 + rows * row;
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="15">Nexus dataplane bench: warm unary latency (µs, p50 dark / p99 light) and cold call (ms, p50)</text>"#
    );
    let mut y = 45;
    let max_u = r.unary.iter().map(|(_, l, _)| l.p99).fold(1.0, f64::max);
    let _ = writeln!(
        s,
        r#"<text x="10" y="{y}" font-weight="bold">warm unary</text>"#
    );
    y += row;
    for (n, l, _) in &r.unary {
        let w99 = 480.0 * l.p99 / max_u;
        let w50 = 480.0 * l.p50 / max_u;
        let _ = writeln!(s, r#"<text x="10" y="{}">{}</text>"#, y + 13, esc(n));
        let _ = writeln!(
            s,
            r##"<rect x="300" y="{y}" width="{w99:.1}" height="18" fill="#9ecae1"/>"##
        );
        let _ = writeln!(
            s,
            r##"<rect x="300" y="{y}" width="{w50:.1}" height="18" fill="#3182bd"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}">{:.0} / {:.0}</text>"#,
            305.0 + w99,
            y + 13,
            l.p50,
            l.p99
        );
        y += row;
    }
    y += row / 2;
    let max_c = r.cold.iter().map(|(_, l)| l.p50).fold(1.0, f64::max);
    let _ = writeln!(
        s,
        r#"<text x="10" y="{y}" font-weight="bold">cold call, 20 ms RTT</text>"#
    );
    y += row;
    for (n, l) in &r.cold {
        let w = 480.0 * l.p50 / max_c;
        let _ = writeln!(s, r#"<text x="10" y="{}">{}</text>"#, y + 13, esc(n));
        let _ = writeln!(
            s,
            r##"<rect x="300" y="{y}" width="{w:.1}" height="18" fill="#e6550d"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}">{:.1} ms</text>"#,
            305.0 + w,
            y + 13,
            l.p50 / 1e3
        );
        y += row;
    }
    let _ = writeln!(s, "</svg>");
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
