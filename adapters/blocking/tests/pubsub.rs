//! Subscriptions: ordering and sequence numbers, slow subscribers, and resubscription after
//! the server restarts.

mod common;

use std::time::Duration;

use common::{Gate, PATIENCE, fast_reconnect, init, router, start, url};
use wsrpc_blocking::{RecvTimeoutError, Server, SubscriptionEvent, connect};

fn notification(event: Option<SubscriptionEvent>) -> (u64, i64) {
    match event {
        Some(e @ SubscriptionEvent::Notification { .. }) => {
            let value = e.value::<i64>().expect("a notification").expect("an integer");
            let SubscriptionEvent::Notification { seq, .. } = e else { unreachable!() };
            (seq, value)
        }
        other => panic!("expected a notification, got {other:?}"),
    }
}

fn next(sub: &wsrpc_blocking::Subscription) -> Option<SubscriptionEvent> {
    sub.recv_timeout(PATIENCE).ok()
}

#[test]
fn published_values_arrive_in_order_with_sequence_numbers() {
    init();
    let server = start(router(&Gate::new()));
    let client = connect(&url(server.local_addr()), Default::default()).unwrap();
    let prices = client.subscribe("prices").unwrap();
    let mut other = client.subscribe("other").unwrap();
    // Publishing from several threads at once is allowed; order is per topic.
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..50 {
                server.publish("noise", &i).unwrap();
            }
        });
        for i in 1..=100i64 {
            let p = server.publish("prices", &(i * 10)).unwrap();
            assert_eq!(p.seq, i as u64);
            assert_eq!(p.subscribers, 1);
        }
    });
    for i in 1..=100i64 {
        assert_eq!(notification(next(&prices)), (i as u64, i * 10));
    }
    assert!(matches!(prices.try_recv(), Err(wsrpc_blocking::TryRecvError::Empty)));
    server.publish("other", "x").unwrap();
    match other.next() {
        Some(SubscriptionEvent::Notification { seq: 1, value }) => assert_eq!(value.get(), "\"x\""),
        e => panic!("{e:?}"),
    }
    // Dropping a subscription unsubscribes it on the server, before anything sent later.
    drop(prices);
    assert_eq!(client.call::<i64>("add", (0, 0)).unwrap(), 0);
    assert_eq!(server.publish("prices", &0).unwrap().subscribers, 0);
    assert_eq!(server.publish("other", &0).unwrap().subscribers, 1);
}

#[test]
fn a_slow_subscriber_sees_every_sequence_number_or_a_gap() {
    init();
    let server = start(router(&Gate::new()));
    let client = connect(&url(server.local_addr()), Default::default()).unwrap();
    let sub = client.subscribe("firehose").unwrap();
    let total = 3000u64;
    for i in 0..total {
        server.publish("firehose", &i).unwrap();
    }
    // Read late: more was sent than the subscription buffers. Values lost on the way are
    // reported as gaps, so the events still cover every sequence number, in order.
    let mut expected = 1;
    let mut gaps = 0;
    let mut last = total;
    while expected <= total {
        match sub.recv_timeout(Duration::from_millis(200)) {
            Ok(SubscriptionEvent::Notification { seq, .. }) => {
                assert_eq!(seq, expected, "notifications are contiguous");
                expected += 1;
            }
            Ok(SubscriptionEvent::Gap { from, to, .. }) => {
                assert_eq!(from, expected, "a gap starts where delivery stopped");
                assert!(to >= from);
                expected = to + 1;
                gaps += 1;
            }
            Ok(e) => panic!("{e:?}"),
            // A gap is reported with the next value: publish one more.
            Err(RecvTimeoutError::Timeout) => {
                last = server.publish("firehose", &0).unwrap().seq;
                assert!(last < total + 100, "no progress");
            }
            Err(e) => panic!("{e}"),
        }
    }
    log::info!("gaps={gaps} last={last}");
}

#[test]
fn reconnects_after_a_server_restart_and_resubscribes() {
    init();
    let gate = Gate::new();
    let server = start(router(&gate));
    let addr = server.local_addr();
    let client = connect(&url(addr), fast_reconnect()).unwrap();
    let sub = client.subscribe("ticks").unwrap();
    server.publish("ticks", &1).unwrap();
    assert_eq!(notification(next(&sub)), (1, 1));

    server.shutdown(PATIENCE);
    let server = Server::builder().router(router(&gate)).bind(addr).start().unwrap();
    // Published before the client is back: the resubscription (a new server epoch) replays
    // it. Published after: delivered live.
    server.publish("ticks", &2).unwrap();
    assert_eq!(notification(next(&sub)), (1, 2));
    assert_eq!(client.call::<i64>("add", (2, 2)).unwrap(), 4);
    server.publish("ticks", &3).unwrap();
    assert_eq!(notification(next(&sub)), (2, 3));
    assert_eq!(server.connections(), 1);
}
