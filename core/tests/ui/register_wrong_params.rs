// A handler registered for a typed method must take the method's params.
use wsrpc_core::rpc::{Method, Router};

const ADD: Method<(i64, i64), i64> = Method::new("add");

fn main() {
    let mut router = Router::new();
    router.register(ADD, |(a, b): (String, i64), _| Ok(b + a.len() as i64));
}
