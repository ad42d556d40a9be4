// A handler registered for a typed method must answer the method's result.
use wsrpc_core::rpc::{Method, Router};

const ADD: Method<(i64, i64), i64> = Method::new("add");

fn main() {
    let mut router = Router::new();
    router.register(ADD, |(a, b), _| Ok(format!("{a}{b}")));
}
