//! Sessions across time against a whole gateway on loopback: messages in order and stored on
//! both sides, a receiver that restarts on its store and gets what it missed exactly once, a
//! sender that restarts with messages undelivered, a reconnect that resends what was not
//! acknowledged without the receiver seeing it twice, answers correlated with their requests,
//! deadlines, the context carried, and renewal while a session is open.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use agw_proto::pb::ErrorCode;
use agw_sdk::{
    session::{Event, Outgoing, Received, SessionError, Sessions},
    store::{Delivery, Store},
};

mod common;
use common::{Gateway, WAIT};

/// The next event, within a few seconds.
fn next(sessions: &mut Sessions) -> Event {
    let start = Instant::now();
    while start.elapsed() < WAIT * 2 {
        if let Some(event) = sessions.next(Duration::from_millis(200)).unwrap() {
            return event;
        }
    }
    panic!("nothing arrived");
}

fn message(sessions: &mut Sessions) -> Received {
    loop {
        match next(sessions) {
            Event::Message(m) => return m,
            Event::Delivered { .. } => continue,
            other => panic!("{other:?}"),
        }
    }
}

fn delivered(sessions: &mut Sessions) -> u64 {
    match next(sessions) {
        Event::Delivered { sequence, .. } => sequence,
        other => panic!("{other:?}"),
    }
}

/// A traveller and a hotel (stores a.redb and b.redb in `dir`), and a session the
/// traveller started with the hotel.
fn traveller_and_hotel(gw: &Gateway, dir: &std::path::Path) -> (Sessions, Sessions, u64) {
    let mut a = Sessions::open(gw.enroll("traveller"), &dir.join("a.redb")).unwrap();
    let hotel = gw.enroll("hotel");
    let b_id = hotel.id().clone();
    let b = Sessions::open(hotel, &dir.join("b.redb")).unwrap();
    let session = a.start(&b_id, "booking").unwrap();
    (a, b, session)
}

fn texts(store: &Store, session: u64) -> Vec<(bool, u64, String)> {
    store
        .history(session)
        .unwrap()
        .into_iter()
        .map(|e| {
            (
                e.outgoing,
                e.sequence,
                String::from_utf8_lossy(&e.payload).into_owned(),
            )
        })
        .collect()
}

#[test]
fn a_session_survives_restarts_and_reconnects_in_order_and_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path());
    let (a_store, b_store) = (
        dir.path().join("traveller.redb"),
        dir.path().join("hotel.redb"),
    );
    let mut a = Sessions::open(gw.enroll("traveller"), &a_store).unwrap();
    let hotel = gw.enroll("hotel");
    let b_id = hotel.id().clone();
    let b_credentials = hotel.credentials().clone();
    let mut b = Sessions::open(hotel, &b_store).unwrap();

    // Two messages with the traveller's context, in order, stored on both sides.
    let session = a.start(&b_id, "booking").unwrap();
    a.set_context(
        session,
        "application/json",
        &br#"{"city":"Lisbon","nights":3}"#[..],
    )
    .unwrap();
    assert_eq!(a.send(session, Outgoing::text("a room please")).unwrap(), 1);
    assert_eq!(a.send(session, Outgoing::text("two guests")).unwrap(), 2);
    let first = message(&mut b);
    let second = message(&mut b);
    assert_eq!(
        (first.session, first.sequence(), &first.payload()[..]),
        (Some(session), 1, &b"a room please"[..])
    );
    assert_eq!(
        (second.sequence(), &second.payload()[..]),
        (2, &b"two guests"[..])
    );
    assert_eq!(first.peer(), a.agent().id().as_str());
    let on_b = b.session(session).unwrap();
    assert_eq!(&on_b.peer_context[..], br#"{"city":"Lisbon","nights":3}"#);
    assert_eq!(on_b.peer_context_type, "application/json");
    assert_eq!((delivered(&mut a), delivered(&mut a)), (1, 2));

    // The hotel stops; what the traveller sends meanwhile is refused for now and kept.
    drop(b);
    gw.wait_online(&b_id, false);
    assert_eq!(a.send(session, Outgoing::text("late check-in")).unwrap(), 3);
    match next(&mut a) {
        Event::Refused { sequence, nack, .. } => {
            assert_eq!(
                (sequence, nack.reason()),
                (3, ErrorCode::DestinationOffline)
            );
        }
        other => panic!("{other:?}"),
    }
    // The traveller restarts too, on its store, while the hotel is still away: its message is
    // sent again at open, and refused again.
    let a_credentials = a.agent().credentials().clone();
    drop(a);
    let mut a = Sessions::open(gw.connect(&a_credentials), &a_store).unwrap();
    assert!(matches!(next(&mut a), Event::Refused { sequence: 3, .. }));

    // The hotel comes back on its store: the history it had, then the message it missed.
    let mut b = Sessions::open(gw.connect(&b_credentials), &b_store).unwrap();
    gw.wait_online(&b_id, true);
    assert_eq!(b.history(session).unwrap().len(), 2);
    a.resend().unwrap();
    let third = message(&mut b);
    assert_eq!(
        (third.sequence(), &third.payload()[..]),
        (3, &b"late check-in"[..])
    );
    assert_eq!(delivered(&mut a), 3);

    // An answer names what it answers.
    let question = b.send(session, Outgoing::text("arriving when?")).unwrap();
    let asked = message(&mut a);
    assert_eq!((asked.sequence(), asked.in_reply_to()), (question, 0));
    a.reply(&asked, Outgoing::text("after 22:00")).unwrap();
    let answer = loop {
        match next(&mut b) {
            Event::Message(m) => break m,
            _ => continue,
        }
    };
    assert_eq!(
        (answer.in_reply_to(), &answer.payload()[..]),
        (question, &b"after 22:00"[..])
    );

    // A request nobody answers ends at its deadline; the receiver sees the deadline passed.
    let t = Instant::now();
    let unanswered = b.request(
        session,
        Outgoing::text("breakfast?"),
        Duration::from_millis(300),
    );
    assert!(
        matches!(unanswered, Err(SessionError::Deadline)),
        "{unanswered:?}"
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
    let late = message(&mut a);
    assert!(
        late.deadline()
            .is_some_and(|d| d <= std::time::SystemTime::now())
    );

    // The traveller's connection drops before it reads the ACK of message 5: it reconnects
    // and sends 5 again; the hotel acknowledges the copy and does not deliver it twice.
    assert_eq!(
        a.send(session, Outgoing::text("a cot for the child"))
            .unwrap(),
        5
    );
    let fifth = message(&mut b);
    assert_eq!(fifth.sequence(), 5);
    a.reconnect().unwrap();
    assert!(b.next(Duration::from_millis(500)).unwrap().is_none());
    assert_eq!(delivered(&mut a), 5);

    // Both histories, in order, each message once; nothing waits in either outbox.
    drop((a, b));
    // The stores hold conversations: their owner reads them, nobody else.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&a_store).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let a_store = Store::open(&a_store).unwrap();
    let b_store = Store::open(&b_store).unwrap();
    let on_b = texts(&b_store, session);
    assert_eq!(
        on_b.iter()
            .filter(|(out, _, _)| !out)
            .map(|(_, s, _)| *s)
            .collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    let on_a = a_store.history(session).unwrap();
    assert!(
        on_a.iter()
            .filter(|e| e.outgoing)
            .all(|e| e.delivery == Delivery::Delivered as i32)
    );
    assert_eq!(on_a.iter().filter(|e| e.outgoing).count(), 5);
    assert!(a_store.outbox().unwrap().is_empty());
    assert!(b_store.outbox().unwrap().is_empty());
    gw.node.stop();
}

#[test]
fn a_session_carries_on_through_a_renewal_and_the_reconnect_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path());
    let (mut a, mut b, session) = traveller_and_hotel(&gw, dir.path());
    a.send(session, Outgoing::text("one")).unwrap();
    assert_eq!(message(&mut b).sequence(), 1);

    let before = a.agent().credentials().certificate.serial.clone();
    a.agent_mut().renew().unwrap();
    assert_ne!(a.agent().credentials().certificate.serial, before);
    // The open connection carries on with the session.
    a.send(session, Outgoing::text("two")).unwrap();
    assert_eq!(message(&mut b).sequence(), 2);
    // Then the new certificate at the next access; the session goes on where it was.
    a.reconnect().unwrap();
    a.send(session, Outgoing::text("three")).unwrap();
    let three = message(&mut b);
    assert_eq!((three.session, three.sequence()), (Some(session), 3));
    // The hotel answers through the renewed agent's new connection.
    b.reply(&three, Outgoing::text("noted")).unwrap();
    let answer = message(&mut a);
    assert_eq!(answer.in_reply_to(), 3);
    gw.node.stop();
}

#[test]
fn sessions_connect_again_on_their_own_when_the_gateway_restarts_on_its_data() {
    use agw_controlplane::node::{Node, NodeConfig};
    use agw_proto::identity::Domain;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path());
    let (mut a, mut b, session) = traveller_and_hotel(&gw, dir.path());
    a.send(session, Outgoing::text("before")).unwrap();
    assert_eq!(message(&mut b).sequence(), 1);
    assert_eq!(delivered(&mut a), 1);

    // The gateway stops; the traveller sends while it is down (kept in its outbox).
    let addresses = gw.node.addresses().clone();
    gw.node.stop();
    assert_eq!(a.send(session, Outgoing::text("while down")).unwrap(), 2);
    assert!(matches!(
        a.next(Duration::from_millis(300)),
        Err(SessionError::Agent(_))
    ));
    // It starts again on its data, on the same ports.
    let node = Node::start(NodeConfig {
        agents: addresses.agents,
        registry: addresses.registry,
        aca: addresses.aca,
        ..NodeConfig::on_loopback(
            Domain::new("travel.example").unwrap(),
            "agw-1",
            dir.path().join("data"),
        )
    })
    .unwrap();
    // Both agents connect again by themselves; the message sent while the gateway was down
    // arrives once (refused while the hotel was not back yet, sent again after a backoff).
    let start = Instant::now();
    let second = loop {
        assert!(start.elapsed() < WAIT * 4, "the message never arrived");
        let _ = a.next(Duration::from_millis(50));
        if let Ok(Some(Event::Message(m))) = b.next(Duration::from_millis(50)) {
            break m;
        }
    };
    assert_eq!(
        (second.sequence(), &second.payload()[..]),
        (2, &b"while down"[..])
    );
    let start = Instant::now();
    while !a.store().outbox().unwrap().is_empty() {
        assert!(start.elapsed() < WAIT * 2, "never acknowledged");
        let _ = a.next(Duration::from_millis(50));
        let _ = b.next(Duration::from_millis(50));
    }
    b.reply(&second, Outgoing::text("welcome back")).unwrap();
    assert_eq!(message(&mut a).in_reply_to(), 2);
    node.stop();
}
