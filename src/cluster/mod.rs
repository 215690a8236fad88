//! Beyond one machine, on Locust's own master/worker protocol: [`wire`]
//! speaks it (msgpack envelopes, spawn orders, stats reports with exact
//! histograms alongside Locust's buckets), [`worker`] is a load generator
//! that a master (stock Locust or cloudswarm's) drives, [`master`] drives
//! workers and merges their exact figures, and [`locustfile`]
//! writes the Python file a stock Locust master needs to know the
//! profile's user classes.

pub mod locustfile;
pub mod master;
pub mod msgpack;
pub mod wire;
pub mod worker;
