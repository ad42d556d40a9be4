//! Method classes: which JSON-RPC methods share a budget, and the tiers of each budget.

use std::collections::HashMap;
use std::fmt;

use super::bucket::Rate;

/// The budget a JSON-RPC method draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MethodClass {
    /// Methods that sign, send or change wallet state (`eth_sendTransaction`).
    Sensitive,
    /// Cheap reads (`eth_call`, `eth_getBalance`).
    ReadOnly,
    /// Account and chain discovery a dApp does when it connects (`eth_requestAccounts`).
    Connection,
    /// Every method not mapped to another class.
    Default,
}

impl MethodClass {
    /// Every class, in the order of [`index`](Self::index).
    pub const ALL: [MethodClass; 4] = [
        MethodClass::Sensitive,
        MethodClass::ReadOnly,
        MethodClass::Connection,
        MethodClass::Default,
    ];

    /// A stable lowercase name for logs and metric labels: `sensitive`, `read_only`,
    /// `connection`, `default`.
    pub const fn as_str(self) -> &'static str {
        match self {
            MethodClass::Sensitive => "sensitive",
            MethodClass::ReadOnly => "read_only",
            MethodClass::Connection => "connection",
            MethodClass::Default => "default",
        }
    }

    /// Position in [`ALL`](Self::ALL), for per-class arrays.
    pub const fn index(self) -> usize {
        match self {
            MethodClass::Sensitive => 0,
            MethodClass::ReadOnly => 1,
            MethodClass::Connection => 2,
            MethodClass::Default => 3,
        }
    }
}

impl fmt::Display for MethodClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Maps method names to [`MethodClass`]es and holds each class's tiers.
///
/// Start from [`default`](Self::default) (every method is `Default`, the tiers listed there) or
/// [`eth_wallet`](Self::eth_wallet), adjust with the `with_*` builders, then call
/// [`class_of`](Self::class_of) per call: an exact name wins, then the longest matching
/// prefix, then [`MethodClass::Default`]. A class with no tiers is not limited.
///
/// ```
/// # use wsrpc_core::limit::{MethodClass, MethodClasses, Rate};
/// let classes = MethodClasses::default()
///     .with_prefix("admin_", MethodClass::Sensitive)
///     .with_method("admin_status", MethodClass::ReadOnly)
///     .with_tiers(MethodClass::Sensitive, &[Rate::per_second(2), Rate::per_minute(20)]);
/// assert_eq!(classes.class_of("admin_shutdown"), MethodClass::Sensitive);
/// assert_eq!(classes.class_of("admin_status"), MethodClass::ReadOnly);
/// assert_eq!(classes.class_of("anything_else"), MethodClass::Default);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodClasses {
    methods: HashMap<Box<str>, MethodClass>,
    /// Sorted longest first, so the first match is the longest.
    prefixes: Vec<(Box<str>, MethodClass)>,
    /// Indexed by [`MethodClass::index`].
    tiers: [Box<[Rate]>; 4],
}

impl Default for MethodClasses {
    /// No method mapped; tiers: sensitive 1/s, 10/min, 100/h; read-only 20/s,
    /// 200/min, 2000/h; connection 5/s, 20/min, 100/h; default 10/s, 100/min, 1000/h.
    fn default() -> Self {
        let tiers = |second, minute, hour| -> Box<[Rate]> {
            Box::new([Rate::per_second(second), Rate::per_minute(minute), Rate::per_hour(hour)])
        };
        Self {
            methods: HashMap::new(),
            prefixes: Vec::new(),
            tiers: [
                tiers(1, 10, 100),
                tiers(20, 200, 2000),
                tiers(5, 20, 100),
                tiers(10, 100, 1000),
            ],
        }
    }
}

impl MethodClasses {
    /// Methods a wallet bridge sees that sign, send or change what the wallet holds.
    pub const ETH_SENSITIVE: &'static [&'static str] = &[
        "eth_sendTransaction",
        "eth_sendRawTransaction",
        "eth_sign",
        "personal_sign",
        "eth_signTypedData",
        "eth_signTypedData_v3",
        "eth_signTypedData_v4",
        "wallet_addEthereumChain",
        "wallet_switchEthereumChain",
        "wallet_watchAsset",
        "wallet_requestPermissions",
    ];

    /// Methods a dApp calls when it connects.
    pub const ETH_CONNECTION: &'static [&'static str] =
        &["eth_requestAccounts", "eth_accounts", "eth_chainId", "net_version"];

    /// Chain reads.
    pub const ETH_READ_ONLY: &'static [&'static str] = &[
        "eth_call",
        "eth_getBalance",
        "eth_blockNumber",
        "eth_estimateGas",
        "eth_gasPrice",
        "eth_getTransactionCount",
        "eth_getTransactionReceipt",
        "eth_getTransactionByHash",
        "eth_getBlockByNumber",
        "eth_getBlockByHash",
        "eth_getLogs",
        "eth_getCode",
        "eth_getStorageAt",
        "eth_feeHistory",
        "eth_maxPriorityFeePerGas",
    ];

    /// The preset for an Ethereum wallet bridge: [`ETH_SENSITIVE`](Self::ETH_SENSITIVE),
    /// [`ETH_CONNECTION`](Self::ETH_CONNECTION) and [`ETH_READ_ONLY`](Self::ETH_READ_ONLY)
    /// mapped to their classes, everything else `Default`, with the default tiers.
    pub fn eth_wallet() -> Self {
        let lists = [
            (Self::ETH_SENSITIVE, MethodClass::Sensitive),
            (Self::ETH_CONNECTION, MethodClass::Connection),
            (Self::ETH_READ_ONLY, MethodClass::ReadOnly),
        ];
        let mut classes = Self::default();
        for (methods, class) in lists {
            for &method in methods {
                classes = classes.with_method(method, class);
            }
        }
        classes
    }

    /// Maps the method named exactly `method` to `class`, replacing an earlier mapping.
    pub fn with_method(mut self, method: &str, class: MethodClass) -> Self {
        self.methods.insert(method.into(), class);
        self
    }

    /// Maps every method starting with `prefix` (and not named exactly) to `class`, replacing
    /// an earlier mapping of the same prefix. The longest matching prefix wins.
    pub fn with_prefix(mut self, prefix: &str, class: MethodClass) -> Self {
        self.prefixes.retain(|(known, _)| **known != *prefix);
        let at = self.prefixes.partition_point(|(known, _)| known.len() >= prefix.len());
        self.prefixes.insert(at, (prefix.into(), class));
        self
    }

    /// Sets the tiers of `class`; a call passes only if every tier has a token. No tiers means
    /// the class is not limited.
    pub fn with_tiers(mut self, class: MethodClass, tiers: &[Rate]) -> Self {
        self.tiers[class.index()] = tiers.into();
        self
    }

    /// The class of `method`: its exact mapping, else the longest matching prefix, else
    /// [`MethodClass::Default`].
    pub fn class_of(&self, method: &str) -> MethodClass {
        if let Some(&class) = self.methods.get(method) {
            return class;
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| method.starts_with(&**prefix))
            .map_or(MethodClass::Default, |&(_, class)| class)
    }

    /// The tiers of `class`.
    pub fn tiers(&self, class: MethodClass) -> &[Rate] {
        &self.tiers[class.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tiers_follow_the_design() {
        let classes = MethodClasses::default();
        let tiers = |s, m, h| [Rate::per_second(s), Rate::per_minute(m), Rate::per_hour(h)];
        assert_eq!(classes.tiers(MethodClass::Sensitive), tiers(1, 10, 100));
        assert_eq!(classes.tiers(MethodClass::ReadOnly), tiers(20, 200, 2000));
        assert_eq!(classes.tiers(MethodClass::Connection), tiers(5, 20, 100));
        assert_eq!(classes.tiers(MethodClass::Default), tiers(10, 100, 1000));
        for method in ["eth_sendTransaction", "eth_call", "eth_requestAccounts", ""] {
            assert_eq!(classes.class_of(method), MethodClass::Default, "{method}");
        }
    }

    #[test]
    fn eth_wallet_preset_classes() {
        let classes = MethodClasses::eth_wallet();
        let expected = [
            ("eth_sendTransaction", MethodClass::Sensitive),
            ("eth_sendRawTransaction", MethodClass::Sensitive),
            ("eth_sign", MethodClass::Sensitive),
            ("personal_sign", MethodClass::Sensitive),
            ("eth_signTypedData", MethodClass::Sensitive),
            ("eth_signTypedData_v3", MethodClass::Sensitive),
            ("eth_signTypedData_v4", MethodClass::Sensitive),
            ("wallet_addEthereumChain", MethodClass::Sensitive),
            ("wallet_switchEthereumChain", MethodClass::Sensitive),
            ("wallet_watchAsset", MethodClass::Sensitive),
            ("wallet_requestPermissions", MethodClass::Sensitive),
            ("eth_requestAccounts", MethodClass::Connection),
            ("eth_accounts", MethodClass::Connection),
            ("eth_chainId", MethodClass::Connection),
            ("net_version", MethodClass::Connection),
            ("eth_call", MethodClass::ReadOnly),
            ("eth_getBalance", MethodClass::ReadOnly),
            ("eth_blockNumber", MethodClass::ReadOnly),
            ("eth_estimateGas", MethodClass::ReadOnly),
            ("eth_gasPrice", MethodClass::ReadOnly),
            ("eth_getTransactionCount", MethodClass::ReadOnly),
            ("eth_getTransactionReceipt", MethodClass::ReadOnly),
            ("eth_getTransactionByHash", MethodClass::ReadOnly),
            ("eth_getBlockByNumber", MethodClass::ReadOnly),
            ("eth_getBlockByHash", MethodClass::ReadOnly),
            ("eth_getLogs", MethodClass::ReadOnly),
            ("eth_getCode", MethodClass::ReadOnly),
            ("eth_getStorageAt", MethodClass::ReadOnly),
            ("eth_feeHistory", MethodClass::ReadOnly),
            ("eth_maxPriorityFeePerGas", MethodClass::ReadOnly),
            ("eth_subscribe", MethodClass::Default),
            ("web3_clientVersion", MethodClass::Default),
            ("wallet_getPermissions", MethodClass::Default),
            ("ETH_CALL", MethodClass::Default),
            ("eth_call ", MethodClass::Default),
        ];
        for (method, class) in expected {
            assert_eq!(classes.class_of(method), class, "{method}");
        }
        assert_eq!(
            classes.tiers(MethodClass::Sensitive),
            MethodClasses::default().tiers(MethodClass::Sensitive)
        );
    }

    #[test]
    fn exact_names_beat_prefixes_and_longer_prefixes_beat_shorter() {
        let classes = MethodClasses::eth_wallet()
            .with_prefix("wallet_", MethodClass::Connection)
            .with_prefix("wallet_get", MethodClass::ReadOnly)
            .with_prefix("w", MethodClass::Sensitive);
        assert_eq!(classes.class_of("wallet_watchAsset"), MethodClass::Sensitive);
        assert_eq!(classes.class_of("wallet_getPermissions"), MethodClass::ReadOnly);
        assert_eq!(classes.class_of("wallet_revokePermissions"), MethodClass::Connection);
        assert_eq!(classes.class_of("web3_sha3"), MethodClass::Sensitive);
        assert_eq!(classes.class_of("wallet"), MethodClass::Sensitive);
        assert_eq!(classes.class_of("eth_x"), MethodClass::Default);
        // Remapping a prefix replaces it, whatever the insertion order was.
        let classes = classes.with_prefix("wallet_get", MethodClass::Default);
        assert_eq!(classes.class_of("wallet_getPermissions"), MethodClass::Default);
        assert_eq!(classes.prefixes.len(), 3);
    }

    #[test]
    fn builders_replace_mappings_and_tiers() {
        let classes = MethodClasses::eth_wallet()
            .with_method("eth_call", MethodClass::Sensitive)
            .with_method("my_method", MethodClass::Connection)
            .with_tiers(MethodClass::ReadOnly, &[Rate::per_minute(7)])
            .with_tiers(MethodClass::Default, &[]);
        assert_eq!(classes.class_of("eth_call"), MethodClass::Sensitive);
        assert_eq!(classes.class_of("my_method"), MethodClass::Connection);
        assert_eq!(classes.tiers(MethodClass::ReadOnly), [Rate::per_minute(7)]);
        assert!(classes.tiers(MethodClass::Default).is_empty());
    }

    #[test]
    fn class_indexes_and_names_are_distinct() {
        for (i, class) in MethodClass::ALL.into_iter().enumerate() {
            assert_eq!(class.index(), i);
            assert_eq!(class.to_string(), class.as_str());
        }
        assert_eq!(MethodClass::ReadOnly.as_str(), "read_only");
    }
}
