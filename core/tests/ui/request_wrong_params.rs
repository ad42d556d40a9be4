// A typed call whose params are not the method's: every client's `request` goes through
// `Command::request`, so this is the error a user of any adapter gets.
use wsrpc_core::rpc::Method;
use wsrpc_core::rpc::client::SubscriptionEvent;
use wsrpc_core::rpc::dispatch::{Channels, Command, EventSink, OneShot, SinkError};

const ADD: Method<(i64, i64), i64> = Method::new("add");

struct Reply;

impl<T> OneShot<T> for Reply {
    fn send(self, _: T) {}
}

struct Sink;

impl EventSink for Sink {
    fn try_send(&mut self, _: SubscriptionEvent) -> Result<(), SinkError> {
        Ok(())
    }
}

struct Test;

impl Channels for Test {
    type Reply<T: Send + 'static> = Reply;
    type Events = Sink;
}

fn main() {
    let _ = Command::<Test>::request(ADD, ("2", 3), None, Reply);
}
