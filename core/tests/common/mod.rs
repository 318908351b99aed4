//! Fixture builders shared by the allocator tests.
#![allow(dead_code)]

use std::net::IpAddr;

use ferrolb_core::{
    Allocator, Config, Family, FamilyPolicy, PortKey, Protocol, ServiceSpec, config,
};

pub fn cfg(yaml: &str) -> Config {
    config::parse(yaml).unwrap_or_else(|e| panic!("bad test config: {e:#?}"))
}

pub fn allocator(yaml: &str) -> Allocator {
    let mut a = Allocator::new();
    a.set_config(cfg(yaml))
        .expect("fresh allocator accepts any config");
    a
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

/// `svc("ns", "name").tcp(80).shared("k")...`
pub fn svc(namespace: &str, name: &str) -> ServiceSpec {
    ServiceSpec::simple(namespace, name)
}

pub trait SpecExt {
    fn tcp(self, port: u16) -> Self;
    fn udp(self, port: u16) -> Self;
    fn shared(self, key: &str) -> Self;
    fn local(self, selector: &str) -> Self;
    fn requesting(self, list: &[&str]) -> Self;
    fn pool(self, name: &str) -> Self;
    fn families(self, policy: FamilyPolicy, families: &[Family]) -> Self;
}

impl SpecExt for ServiceSpec {
    fn tcp(mut self, port: u16) -> Self {
        self.sharing.ports.push(PortKey {
            protocol: Protocol::Tcp,
            port,
        });
        self
    }
    fn udp(mut self, port: u16) -> Self {
        self.sharing.ports.push(PortKey {
            protocol: Protocol::Udp,
            port,
        });
        self
    }
    fn shared(mut self, key: &str) -> Self {
        self.sharing.key = Some(key.to_owned());
        self
    }
    fn local(mut self, selector: &str) -> Self {
        self.sharing.backend = Some(selector.to_owned());
        self
    }
    fn requesting(mut self, list: &[&str]) -> Self {
        self.requested_ips = ips(list);
        self
    }
    fn pool(mut self, name: &str) -> Self {
        self.pool = Some(name.to_owned());
        self
    }
    fn families(mut self, policy: FamilyPolicy, families: &[Family]) -> Self {
        self.family_policy = policy;
        self.families = families.to_vec();
        self
    }
}
