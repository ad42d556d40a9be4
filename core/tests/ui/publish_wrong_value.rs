// Only values of a topic's type can be published to it.
use wsrpc_core::rpc::Topic;
use wsrpc_core::service::Service;

const TICKS: Topic<u64> = Topic::new("ticks");

fn publish(service: &Service) {
    let _ = service.publish(TICKS, "not a number");
}

fn main() {}
