//! Evergreen's monitor (issue #5). So far: the drift statistics
//! ([`drift`]) that compare live traffic, binned with the reference
//! profile's frozen edges, against that profile — in O(bins) memory per
//! feature. The daemon (ingest, windows, policies, actions) builds on it.

pub mod drift;
pub mod special;
