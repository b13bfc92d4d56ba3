//! The generator of the shipped configuration: `haproxy/pool.txt` (the pools and their servers) and
//! `haproxy/entry.txt` (the entry policy) rendered through `haproxy/haproxy.cfg.in` into
//! `haproxy/haproxy.cfg`, the Kubernetes base (`k8s/base/haproxy/*`, `k8s/base/backends.yaml`) and
//! the compose profile. `egress-gen --write | --check` (scripts/gen-config) writes or checks them;
//! the test harness renders the `test` profile of the same template for every test that runs HAProxy.
#![forbid(unsafe_code)]

pub mod entry;
pub mod shipped;
