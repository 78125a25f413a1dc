//! The relay through real sockets on loopback, several shards: delivery within and across
//! shards, every NACK reason a relay gives, back-pressure from a slow receiver, and the
//! counters that prove accepted = delivered + NACKed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use agw_dataplane::routing::Route;
use agw_proto::{
    DEFAULT_HOP_LIMIT,
    pb::{self, ErrorCode},
};
use agw_sdk::agent::{AgentConnection, AgentError, Credentials, Incoming};
use bytes::Bytes;
use common::{Gateway, gateway, wait_until};

const WAIT: Duration = Duration::from_secs(5);

/// Connects fresh agents until one shard has two and another has one more: returns
/// (a, b) on one shard and c on another, connected.
fn spread(gw: &Gateway) -> [(Arc<Credentials>, AgentConnection); 3] {
    let mut by_shard: Vec<Vec<(Arc<Credentials>, AgentConnection)>> =
        (0..gw.dp.shards()).map(|_| Vec::new()).collect();
    for i in 0..64 {
        let creds = gw.authority.certify(&format!("agent-{i}"));
        let conn = gw.connect(&creds);
        let shard = gw.shard_of(&creds.agent);
        by_shard[usize::from(shard)].push((creds, conn));
        let pair = by_shard.iter().position(|v| v.len() >= 2);
        if let Some(p) = pair
            && let Some(o) = (0..by_shard.len()).find(|&o| o != p && !by_shard[o].is_empty())
        {
            let c = by_shard[o].pop().unwrap();
            let b = by_shard[p].pop().unwrap();
            let a = by_shard[p].pop().unwrap();
            return [a, b, c];
        }
    }
    panic!("SO_REUSEPORT never spread 64 connections over two shards")
}

fn recv(conn: &mut AgentConnection) -> Incoming {
    loop {
        match conn.recv(WAIT).unwrap() {
            Some(Incoming::HeartbeatAck(_)) => continue,
            Some(other) => return other,
            None => panic!("nothing arrived within {WAIT:?}"),
        }
    }
}

fn expect_nack(conn: &mut AgentConnection, message_id: u64, reason: ErrorCode) -> pb::Nack {
    match recv(conn) {
        Incoming::Nack(n) => {
            assert_eq!((n.message_id, n.reason()), (message_id, reason), "{n:?}");
            assert_eq!(n.reporter, "spiffe://travel.example/agw/edge-1");
            n
        }
        other => panic!("expected a NACK {reason:?}, got {other:?}"),
    }
}

/// `from` sends to `to`, which receives it intact and acknowledges it.
fn exchange(
    from: &Credentials,
    conn_from: &mut AgentConnection,
    to: &Credentials,
    conn_to: &mut AgentConnection,
) {
    let payload = Bytes::from(format!("hello {} from {}", to.agent, from.agent));
    let id = conn_from.send(to.agent.as_str(), payload.clone()).unwrap();
    let Incoming::Message(m, hop) = recv(conn_to) else {
        panic!("no message")
    };
    assert_eq!(
        (m.source.as_str(), m.destination.as_str(), m.message_id),
        (from.agent.as_str(), to.agent.as_str(), id)
    );
    assert_eq!(m.payload, payload);
    // One gateway crossed: the hop limit is one less than sent.
    assert_eq!(hop, DEFAULT_HOP_LIMIT - 1);
    conn_to.ack(&m).unwrap();
    match recv(conn_from) {
        Incoming::Ack(ack) => assert_eq!((ack.message_id, ack.source), (id, to.agent.to_string())),
        other => panic!("expected the ACK, got {other:?}"),
    }
}

#[test]
fn messages_cross_within_and_between_shards_and_acks_return() {
    let gw = gateway(2, |_| {});
    let [(a, mut ca), (b, mut cb), (c, mut cc)] = spread(&gw);
    assert_eq!(gw.shard_of(&a.agent), gw.shard_of(&b.agent));
    assert_ne!(gw.shard_of(&a.agent), gw.shard_of(&c.agent));

    exchange(&a, &mut ca, &b, &mut cb); // same shard
    exchange(&a, &mut ca, &c, &mut cc); // across shards
    let t = gw.settled_totals();
    assert_eq!((t.accepted, t.delivered, t.nacked_total()), (4, 4, 0));
    assert!(t.cross_shard_batches >= 2, "{t:?}");
    // Each delivered frame's time in the gateway is in the histogram.
    assert_eq!(t.residence.iter().sum::<u64>(), t.delivered);
    assert!(t.residence_ns > 0);
}

#[test]
fn every_undeliverable_message_gets_a_nack_with_its_reason() {
    let gw = gateway(2, |_| {});
    let [(a, mut ca), (b, cb), (_c, _cc)] = spread(&gw);

    // Nobody by that name.
    let id = ca
        .send(
            "spiffe://travel.example/agent/nobody",
            Bytes::from_static(b"?"),
        )
        .unwrap();
    let n = expect_nack(&mut ca, id, ErrorCode::NoRoute);
    assert_eq!(
        n.original_destination,
        "spiffe://travel.example/agent/nobody"
    );

    // Known but gone: its connection closed, its route is offline.
    drop(cb);
    gw.wait_route(&b.agent, |r| r == Some(Route::Offline));
    let id = ca.send(b.agent.as_str(), Bytes::from_static(b"?")).unwrap();
    expect_nack(&mut ca, id, ErrorCode::DestinationOffline);

    // Hop limit exhausted.
    let (mut writer, mut reader) = ca.split();
    let mut m = pb::AgentMessage {
        destination: a.agent.to_string(),
        source: a.agent.to_string(),
        message_id: 900,
        ..Default::default()
    };
    writer.queue_raw(&m, 0).unwrap();
    // Claiming to be someone else.
    m.message_id = 901;
    m.source = b.agent.to_string();
    writer.queue_raw(&m, 5).unwrap();
    writer.flush().unwrap();
    for (id, reason) in [(900, ErrorCode::TtlExpired), (901, ErrorCode::Unauthorized)] {
        match reader.recv().unwrap() {
            Incoming::Nack(n) => assert_eq!((n.message_id, n.reason()), (id, reason)),
            other => panic!("{other:?}"),
        }
    }
    let t = gw.settled_totals();
    for reason in [
        ErrorCode::NoRoute,
        ErrorCode::DestinationOffline,
        ErrorCode::TtlExpired,
        ErrorCode::Unauthorized,
    ] {
        assert_eq!(t.nacked_for(reason), 1, "{reason:?}: {t:?}");
    }
    assert_eq!((t.accepted, t.delivered), (4, 0));
}

/// Sends `count` messages of `size` bytes from a thread, returns the writer's result.
fn pump(
    conn: AgentConnection,
    to: String,
    count: usize,
    size: usize,
) -> std::thread::JoinHandle<(agw_sdk::agent::Reader, Result<(), AgentError>)> {
    std::thread::spawn(move || {
        let (mut writer, reader) = conn.split();
        let payload = Bytes::from(vec![0x5a; size]);
        let mut result = Ok(());
        for _ in 0..count {
            if let Err(e) = writer.queue(&to, payload.clone()) {
                result = Err(e);
                break;
            }
            if writer.queued() > 32 * 1024
                && let Err(e) = writer.flush()
            {
                result = Err(e);
                break;
            }
        }
        (reader, result.and_then(|()| writer.flush()))
    })
}

#[test]
fn a_slow_receiver_on_the_same_shard_pauses_its_sender_with_memory_bounded() {
    let soft = 64 * 1024;
    let gw = gateway(1, |c| {
        c.queue_soft_limit = soft;
        c.queue_hard_limit = 1024 * 1024;
    });
    let sender = gw.authority.certify("fast");
    let receiver = gw.authority.certify("slow");
    let cs = gw.connect(&sender);
    let mut cr = gw.connect(&receiver);

    let count = 20_000;
    let pumping = pump(cs, receiver.agent.to_string(), count, 1024);
    // The receiver reads nothing for a while: the queue for it stops near the soft limit
    // (plus at most one read's worth of frames), the sender is not read meanwhile.
    let mut peak = 0;
    for _ in 0..100 {
        peak = peak.max(gw.dp.totals().queued_bytes);
        std::thread::sleep(Duration::from_millis(5));
    }
    let bound = (soft + 64 * 1024 + 2048) as u64;
    assert!(peak > 0 && peak <= bound, "peak {peak} > {bound}");
    assert!(!pumping.is_finished(), "the sender was not paused");

    let mut received = 0;
    while received < count {
        match recv(&mut cr) {
            Incoming::Message(m, _) => {
                assert_eq!(m.payload.len(), 1024);
                received += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    let (_reader, result) = pumping.join().unwrap();
    result.unwrap();
    let t = gw.settled_totals();
    assert_eq!(
        (t.accepted, t.delivered, t.nacked_total()),
        (count as u64, count as u64, 0)
    );
}

#[test]
fn a_slow_receiver_on_another_shard_pauses_its_sender_too() {
    let hard = 1024 * 1024;
    let gw = gateway(2, |c| {
        c.queue_soft_limit = 64 * 1024;
        c.queue_hard_limit = hard;
    });
    let [(_a, ca), (_b, _cb), (c, mut cc)] = spread(&gw);
    // More than loopback's socket buffers hold, so a paused sender blocks.
    let count = 20_000;
    let pumping = pump(ca, c.agent.to_string(), count, 1024);
    // The receiver reads nothing: the other shard marks it congested and the sender's shard
    // stops reading the sender. What was in flight meanwhile lands on top of the soft limit,
    // well under the hard limit: nothing is NACKed, memory stays bounded.
    let mut peak = 0;
    for _ in 0..100 {
        peak = peak.max(gw.dp.totals().queued_bytes);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(peak > 0 && peak <= hard as u64, "peak {peak} > {hard}");
    assert!(!pumping.is_finished(), "the sender was not paused");
    assert_eq!(gw.dp.totals().nacked_total(), 0);
    let mut received = 0;
    while received < count {
        match cc.recv(WAIT).unwrap() {
            Some(Incoming::Message(..)) => received += 1,
            other => panic!("{other:?} after {received}: {:#?}", gw.dp.counters()),
        }
    }
    pumping.join().unwrap().1.unwrap();
    let t = gw.settled_totals();
    assert_eq!((t.delivered, t.nacked_total()), (count as u64, 0));
}

#[test]
fn frames_past_a_queues_hard_limit_are_nacked_overloaded() {
    // Soft and hard limit equal and small: one read of the burst overflows the queue.
    let limit = 16 * 1024;
    let gw = gateway(1, |c| {
        c.queue_soft_limit = limit;
        c.queue_hard_limit = limit;
    });
    let sender = gw.authority.certify("burst");
    let receiver = gw.authority.certify("sleepy");
    let (mut writer, mut reader) = gw.connect(&sender).split();
    let mut cr = gw.connect(&receiver);
    let nacks = Arc::new(AtomicU64::new(0));
    let counting = nacks.clone();
    std::thread::spawn(move || {
        while let Ok(incoming) = reader.recv() {
            if let Incoming::Nack(n) = incoming {
                assert_eq!(n.reason(), ErrorCode::Overloaded);
                assert!(n.retry_after_ms > 0);
                counting.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let count = 300u64;
    let payload = Bytes::from(vec![7u8; 1024]);
    for _ in 0..count {
        writer
            .queue(receiver.agent.as_str(), payload.clone())
            .unwrap();
    }
    writer.flush().unwrap();
    wait_until(|| gw.dp.totals().nacked_total() > 0, "an OVERLOADED NACK");
    // The receiver's queue, plus the NACKs queued to the sender.
    let queued = gw.dp.totals().queued_bytes;
    assert!(queued <= (3 * limit) as u64, "{queued}");
    let mut received = 0u64;
    while let Some(incoming) = cr.recv(Duration::from_millis(500)).unwrap() {
        if let Incoming::Message(..) = incoming {
            received += 1;
        }
    }
    let t = gw.settled_totals();
    let overloaded = t.nacked_for(ErrorCode::Overloaded);
    assert!(overloaded > 0 && received > 0, "{t:?}");
    assert_eq!((t.delivered, received + overloaded), (received, count));
    wait_until(
        || nacks.load(Ordering::Relaxed) == overloaded,
        "every NACK at the sender",
    );
}

#[test]
fn a_thousand_agents_at_once() {
    let gw = gateway(2, |_| {});
    let n = 1000;
    let creds: Vec<_> = (0..n)
        .map(|i| gw.authority.certify(&format!("crowd-{i}")))
        .collect();
    let mut conns: Vec<_> = creds.iter().map(|c| gw.connect(c)).collect();
    for i in 0..n {
        let to = creds[(i + 1) % n].agent.to_string();
        conns[i]
            .send(&to, Bytes::from(format!("from {i}")))
            .unwrap();
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        let Incoming::Message(m, _) = recv(conn) else {
            panic!("agent {i} got no message")
        };
        assert_eq!(m.payload, Bytes::from(format!("from {}", (i + n - 1) % n)));
    }
    let t = gw.settled_totals();
    assert_eq!((t.accepted, t.delivered), (n as u64, n as u64));
    assert_eq!(t.connections_open, n as u64);
    assert!(gw.dp.counters().iter().all(|s| s.agents_accessed > 0));
}

/// Reads messages until the gateway closes the connection; returns how many arrived and the
/// notification it closed with.
fn read_until_closed(conn: &mut AgentConnection) -> (u64, Option<pb::Notification>) {
    let mut received = 0;
    loop {
        match conn.recv(WAIT) {
            Ok(Some(Incoming::Message(..))) => received += 1,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the gateway neither sent nor closed within {WAIT:?}"),
            Err(AgentError::Closed(note)) => return (received, note),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_drain_delivers_every_accepted_frame_then_closes_with_draining() {
    let gw = gateway(2, |_| {});
    let [(_a, ca), (_b, _cb), (c, mut cc)] = spread(&gw);
    // The receiver, on another shard, reads nothing yet: frames queue for it and its sender is
    // paused with more frames unread in its socket.
    // More than every buffer on the way can hold (loopback's grow to several MiB).
    let pumping = pump(ca, c.agent.to_string(), 100_000, 1024);
    wait_until(
        || gw.dp.totals().queued_bytes > 64 * 1024,
        "frames queued for the receiver",
    );
    std::thread::scope(|scope| {
        let draining = scope.spawn(|| gw.dp.drain(Duration::from_secs(20), |_, _| {}));
        // A newcomer is refused with the reason.
        std::thread::sleep(Duration::from_millis(300));
        let late = gw.authority.certify("late");
        match AgentConnection::connect_plaintext(gw.addr(), late, WAIT) {
            Err(AgentError::Closed(Some(n))) => assert_eq!(n.code(), ErrorCode::Draining),
            other => panic!("a newcomer during a drain: {other:?}"),
        }
        // Everything accepted reaches the receiver, then the gateway closes, saying why.
        let (received, note) = read_until_closed(&mut cc);
        assert_eq!(note.map(|n| n.code()), Some(ErrorCode::Draining));
        let report = draining.join().unwrap();
        let t = report.totals;
        assert!(!report.abandoned, "{report:?}");
        assert_eq!(
            (t.accepted, t.delivered, t.nacked_total()),
            (received, received, 0)
        );
        // The sender's frames not read before the drain were never accepted.
        assert!(received < 100_000, "{t:?}");
    });
    assert!(pumping.join().unwrap().1.is_err(), "the sender was cut off");
}

#[test]
fn frames_still_queued_at_the_drain_deadline_are_nacked_draining() {
    let gw = gateway(1, |_| {});
    let sender = gw.authority.certify("eager");
    let receiver = gw.authority.certify("asleep");
    let (mut writer, mut reader) = gw.connect(&sender).split();
    let _cr = gw.connect(&receiver);
    // The receiver never reads: its socket fills, then its queue.
    let to = receiver.agent.to_string();
    std::thread::spawn(move || {
        let payload = Bytes::from(vec![1u8; 1024]);
        for _ in 0..50_000 {
            if writer.queue(&to, payload.clone()).is_err() {
                return;
            }
            if writer.queued() > 32 * 1024 && writer.flush().is_err() {
                return;
            }
        }
    });
    // Until the kernel's buffers are full (they grow for a while): nothing more gets written,
    // and frames wait in the gateway's queue.
    wait_until(
        || {
            let before = gw.dp.totals().delivered;
            std::thread::sleep(Duration::from_millis(200));
            let t = gw.dp.totals();
            t.delivered == before && t.queued_bytes > 128 * 1024
        },
        "the receiver's socket full and frames queued for it",
    );
    let nacks = std::thread::spawn(move || {
        let mut draining = 0u64;
        while let Ok(incoming) = reader.recv() {
            if let Incoming::Nack(n) = incoming {
                assert_eq!(n.reason(), ErrorCode::Draining, "{n:?}");
                draining += 1;
            }
        }
        draining
    });
    let report = gw.dp.drain(Duration::from_millis(300), |_, _| {});
    let t = report.totals;
    assert!(report.abandoned, "{report:?}");
    // Nothing lost: every accepted frame was written or NACKed, and every NACK reached the
    // sender before its connection closed.
    assert_eq!(t.in_flight(), 0, "{t:?}");
    assert!(t.nacked_for(ErrorCode::Draining) > 0, "{t:?}");
    assert_eq!(t.nacked_total(), t.nacked_for(ErrorCode::Draining));
    assert_eq!(nacks.join().unwrap(), t.nacked_for(ErrorCode::Draining));
}

#[test]
fn limits_change_while_the_relay_runs() {
    let gw = gateway(1, |_| {});
    let first = gw.authority.certify("first");
    let _c1 = gw.connect(&first);
    let mut limits = agw_dataplane::DataplaneConfig::new(
        agw_proto::identity::GatewayId::parse("spiffe://travel.example/agw/edge-1").unwrap(),
        gw.addr(),
    )
    .live_limits();
    limits.queue_soft_limit = limits.queue_hard_limit + 1;
    assert!(
        gw.dp.set_limits(limits).is_err(),
        "inconsistent limits taken"
    );
    limits.queue_soft_limit = 1024;
    limits.max_connections_per_shard = 1;
    gw.dp.set_limits(limits).unwrap();
    // Applied at the shard's next tick: a second connection is refused at accept.
    let second = gw.authority.certify("second");
    wait_until(
        || {
            AgentConnection::connect_plaintext(
                gw.addr(),
                second.clone(),
                Duration::from_millis(500),
            )
            .is_err()
        },
        "the connection cap applied",
    );
    assert!(gw.dp.totals().connections_refused >= 1);
    limits.max_connections_per_shard = 10;
    gw.dp.set_limits(limits).unwrap();
    wait_until(
        || AgentConnection::connect_plaintext(gw.addr(), second.clone(), WAIT).is_ok(),
        "the cap raised again",
    );
}

#[test]
fn a_flooding_agent_is_rate_limited_and_the_others_are_not() {
    let gw = gateway(1, |c| {
        c.agent_rate = 50;
        c.agent_burst = 10;
    });
    let flood = gw.authority.certify("flood");
    let calm = gw.authority.certify("calm");
    let sink = gw.authority.certify("sink");
    let mut flooder = gw.connect(&flood);
    let mut quiet = gw.connect(&calm);
    let mut receiver = gw.connect(&sink);

    // 200 messages at once: the burst of 10 (and what refills meanwhile) gets through, the
    // rest is NACKed RATE_LIMITED with when to retry.
    for _ in 0..200 {
        flooder
            .queue(sink.agent.as_str(), Bytes::from_static(b"flood"))
            .unwrap();
    }
    flooder.flush().unwrap();
    let mut limited = 0;
    while limited < 150 {
        match flooder.recv(WAIT).unwrap() {
            Some(Incoming::Nack(n)) => {
                assert_eq!(n.reason, ErrorCode::RateLimited as i32, "{n:?}");
                assert!(n.retry_after_ms > 0 && n.retry_after_ms <= 20, "{n:?}");
                limited += 1;
            }
            Some(Incoming::HeartbeatAck(_)) => {}
            other => panic!("{other:?}"),
        }
    }

    // Meanwhile another agent's messages pass, each of them.
    for i in 0..5u8 {
        quiet
            .send(sink.agent.as_str(), Bytes::from(vec![i]))
            .unwrap();
    }
    let mut from_calm = 0;
    let mut from_flood = 0;
    while from_calm < 5 {
        match receiver.recv(WAIT).unwrap() {
            Some(Incoming::Message(m, _)) if m.source == calm.agent.as_str() => from_calm += 1,
            Some(Incoming::Message(_, _)) => from_flood += 1,
            Some(Incoming::HeartbeatAck(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(from_flood <= 50, "{from_flood} of the flood delivered");
    assert!(gw.dp.totals().nacked_for(ErrorCode::RateLimited) >= 150);

    // The limit lifted live: the flooder sends freely again.
    let mut limits = agw_dataplane::DataplaneConfig::new(
        agw_proto::identity::GatewayId::parse("spiffe://travel.example/agw/edge-1").unwrap(),
        gw.addr(),
    )
    .live_limits();
    limits.agent_rate = 0;
    gw.dp.set_limits(limits).unwrap();
    wait_until(
        || {
            flooder
                .send(sink.agent.as_str(), Bytes::from_static(b"after"))
                .unwrap();
            loop {
                match flooder.recv(Duration::from_millis(100)).unwrap() {
                    Some(Incoming::Nack(_)) => return false,
                    Some(_) => continue,
                    None => return true,
                }
            }
        },
        "the rate limit lifted",
    );
}

#[test]
fn the_authorization_policy_denies_with_its_reason_and_changes_live() {
    use agw_dataplane::authorization::{Action, Authorization, Pattern, Rule};
    let gw = gateway(1, |_| {});
    let intern = gw.authority.certify("intern");
    let payments = gw.authority.certify("payments");
    let desk = gw.authority.certify("desk");
    let mut from_intern = gw.connect(&intern);
    let mut to_payments = gw.connect(&payments);
    let mut to_desk = gw.connect(&desk);
    let domain = intern.agent.domain().to_owned();
    gw.dp.set_authorization(Authorization::new(
        &domain,
        vec![Rule {
            from: Pattern::Agent(intern.agent.to_string()),
            to: Pattern::Agent(payments.agent.to_string()),
            action: Action::Deny,
        }],
        Action::Allow,
        Action::Deny,
    ));

    // The intern may not reach payments: NACKed UNAUTHORIZED, saying which rule.
    let id = from_intern
        .send(payments.agent.as_str(), Bytes::from_static(b"pay me"))
        .unwrap();
    match from_intern.recv(WAIT).unwrap() {
        Some(Incoming::Nack(n)) => {
            assert_eq!(
                (n.message_id, n.reason),
                (id, ErrorCode::Unauthorized as i32)
            );
            assert_eq!(n.detail, "denied by authorization rule 1");
        }
        other => panic!("{other:?}"),
    }
    // The desk, the same shard and domain, is allowed by the default.
    from_intern
        .send(desk.agent.as_str(), Bytes::from_static(b"hello desk"))
        .unwrap();
    match to_desk.recv(WAIT).unwrap() {
        Some(Incoming::Message(m, _)) => assert_eq!(&m.payload[..], b"hello desk"),
        other => panic!("{other:?}"),
    }
    // Across domains the default denies: a destination of another domain.
    from_intern
        .send(
            "spiffe://elsewhere.example/agent/x",
            Bytes::from_static(b"out"),
        )
        .unwrap();
    match from_intern.recv(WAIT).unwrap() {
        Some(Incoming::Nack(n)) => {
            assert_eq!(n.reason, ErrorCode::Unauthorized as i32);
            assert_eq!(
                n.detail,
                "denied by the authorization default across domains"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(gw.dp.totals().nacked_for(ErrorCode::Unauthorized), 2);

    // The policy replaced live: now the intern reaches payments.
    gw.dp.set_authorization(Authorization::allow_all(&domain));
    from_intern
        .send(payments.agent.as_str(), Bytes::from_static(b"allowed now"))
        .unwrap();
    match to_payments.recv(WAIT).unwrap() {
        Some(Incoming::Message(m, _)) => assert_eq!(&m.payload[..], b"allowed now"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_source_opening_connections_too_fast_is_refused_at_accept() {
    let gw = gateway(1, |c| c.connection_rate_per_source = 4);
    let agent = gw.authority.certify("eager");
    let refused_before = gw.dp.totals().connections_refused;
    // Twelve connections at once: the allowance of four (and what refills meanwhile) is
    // served, the rest closed at accept.
    let outcomes: Vec<bool> = (0..12)
        .map(|_| {
            AgentConnection::connect_plaintext(gw.addr(), agent.clone(), Duration::from_secs(2))
                .is_ok()
        })
        .collect();
    let served = outcomes.iter().filter(|ok| **ok).count();
    assert!((4..12).contains(&served), "{outcomes:?}");
    assert!(gw.dp.totals().connections_refused - refused_before >= (12 - served) as u64);
    // A second later the allowance is back.
    std::thread::sleep(Duration::from_millis(1100));
    AgentConnection::connect_plaintext(gw.addr(), agent, WAIT).unwrap();
}
