//! Helpers shared by the integration tests: one interface over the three adapters.
