//! The Agent Gateway's load generator: agents over connections sending framed messages at a
//! target rate, latency measured from the intended send time, histograms printed and written as
//! JSON.
//!
//! Status: empty. The benchmark-harness issue builds it; the codec benchmark lives in `benches/`.
