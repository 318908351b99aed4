//! Service defaulting, validation and allocation (cluster IPs and node ports), as the real
//! server's Service registry does them.
//!
//! The cluster is dual-stack with IPv4 primary: service ranges `10.96.0.0/12` and
//! `fd00:10:96::/108`, node ports `30000-32767`.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::{Map, Value, json};

use super::status::Cause;

const V4_BASE: u32 = u32::from_be_bytes([10, 96, 0, 0]);
const V4_SIZE: u32 = 1 << 20;
const V6_BASE: u128 = 0xfd00_0010_0096_0000_0000_0000_0000_0000;
const V6_SIZE: u32 = 1 << 20;
pub const NODE_PORT_MIN: u16 = 30000;
pub const NODE_PORT_MAX: u16 = 32767;

const TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];
const POLICIES: &[&str] = &["SingleStack", "PreferDualStack", "RequireDualStack"];
const FAMILIES: &[&str] = &["IPv4", "IPv6"];

#[derive(Debug, Clone)]
struct Pool {
    used: HashSet<u32>,
    next: u32,
    size: u32,
}

impl Pool {
    fn new(size: u32, first: u32) -> Self {
        Pool {
            used: HashSet::new(),
            next: first,
            size,
        }
    }

    /// The next free offset after the last one given, wrapping; offsets below 2 are reserved
    /// (network address, and `.1` for the `kubernetes` Service).
    fn allocate(&mut self, first: u32) -> Option<u32> {
        let span = self.size - first;
        for i in 0..span {
            let o = first + (self.next - first + i) % span;
            if !self.used.contains(&o) {
                self.used.insert(o);
                self.next = o + 1;
                if self.next >= self.size {
                    self.next = first;
                }
                return Some(o);
            }
        }
        None
    }
}

/// What a Service holds: cluster IPs and node ports.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Held {
    ips: Vec<IpAddr>,
    ports: Vec<u16>,
}

#[derive(Debug, Clone)]
pub struct ServiceAllocator {
    v4: Pool,
    v6: Pool,
    ports: Pool,
}

impl Default for ServiceAllocator {
    fn default() -> Self {
        ServiceAllocator {
            v4: Pool::new(V4_SIZE - 1, 2),
            v6: Pool::new(V6_SIZE - 1, 2),
            ports: Pool::new(u32::from(NODE_PORT_MAX - NODE_PORT_MIN) + 1, 0),
        }
    }
}

fn ip_offset(ip: IpAddr) -> Option<(bool, u32)> {
    match ip {
        IpAddr::V4(a) => {
            let n = u32::from(a);
            (n > V4_BASE && n - V4_BASE < V4_SIZE - 1).then(|| (true, n - V4_BASE))
        }
        IpAddr::V6(a) => {
            let n = u128::from(a);
            (n > V6_BASE && n - V6_BASE < u128::from(V6_SIZE - 1))
                .then(|| (false, (n - V6_BASE) as u32))
        }
    }
}

fn family_of(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn str_at<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str)
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn needs_cluster_ip(spec: &Map<String, Value>) -> bool {
    str_at(spec, "type") != Some("ExternalName")
}

fn needs_node_ports(spec: &Map<String, Value>) -> bool {
    match str_at(spec, "type") {
        Some("NodePort") => true,
        Some("LoadBalancer") => {
            spec.get("allocateLoadBalancerNodePorts")
                .and_then(Value::as_bool)
                != Some(false)
        }
        _ => false,
    }
}

fn held(svc: &Value) -> Held {
    let mut h = Held::default();
    let Some(spec) = svc.get("spec").and_then(Value::as_object) else {
        return h;
    };
    for ip in string_list(spec.get("clusterIPs")) {
        if let Ok(ip) = ip.parse::<IpAddr>() {
            h.ips.push(ip);
        }
    }
    for p in spec
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(n) = p.get("nodePort").and_then(Value::as_u64) {
            let n = n as u16;
            if !h.ports.contains(&n) {
                h.ports.push(n);
            }
        }
    }
    if let Some(n) = spec.get("healthCheckNodePort").and_then(Value::as_u64) {
        h.ports.push(n as u16);
    }
    h
}

impl ServiceAllocator {
    fn ip_used(&self, ip: IpAddr) -> bool {
        match ip_offset(ip) {
            Some((true, o)) => self.v4.used.contains(&o),
            Some((false, o)) => self.v6.used.contains(&o),
            None => false,
        }
    }

    fn mark_ip(&mut self, ip: IpAddr, used: bool) {
        if let Some((v4, o)) = ip_offset(ip) {
            let pool = if v4 { &mut self.v4 } else { &mut self.v6 };
            if used {
                pool.used.insert(o);
            } else {
                pool.used.remove(&o);
            }
        }
    }

    fn mark_port(&mut self, port: u16, used: bool) {
        let o = u32::from(port - NODE_PORT_MIN);
        if used {
            self.ports.used.insert(o);
        } else {
            self.ports.used.remove(&o);
        }
    }

    fn port_used(&self, port: u16) -> bool {
        self.ports.used.contains(&u32::from(port - NODE_PORT_MIN))
    }

    fn allocate_ip(&mut self, family: &str) -> Option<IpAddr> {
        if family == "IPv4" {
            self.v4
                .allocate(2)
                .map(|o| IpAddr::V4(Ipv4Addr::from(V4_BASE + o)))
        } else {
            self.v6
                .allocate(2)
                .map(|o| IpAddr::V6(Ipv6Addr::from(V6_BASE + u128::from(o))))
        }
    }

    fn allocate_port(&mut self) -> Option<u16> {
        self.ports.allocate(0).map(|o| NODE_PORT_MIN + o as u16)
    }

    /// Releases what a deleted Service held.
    pub fn release(&mut self, svc: &Value) {
        let h = held(svc);
        for ip in h.ips {
            self.mark_ip(ip, false);
        }
        for p in h.ports {
            self.mark_port(p, false);
        }
    }

    /// Re-marks what a stored Service holds (after a restart that keeps the contents).
    pub fn claim(&mut self, svc: &Value) {
        let h = held(svc);
        for ip in h.ips {
            self.mark_ip(ip, true);
        }
        for p in h.ports {
            self.mark_port(p, true);
        }
    }

    /// Defaults and validates `svc` (a create when `old` is `None`, else an update of `old`),
    /// allocates what it newly needs and releases what `old` held and it no longer does.
    pub fn admit(&mut self, svc: &mut Value, old: Option<&Value>) -> Result<(), Vec<Cause>> {
        let mut causes = Vec::new();
        let old_spec = old
            .and_then(|o| o.get("spec"))
            .and_then(Value::as_object)
            .cloned();
        if !svc.get("spec").is_some_and(Value::is_object) {
            svc["spec"] = json!({});
        }
        let spec = svc["spec"].as_object_mut().expect("spec is an object");
        default_and_validate(spec, old_spec.as_ref(), &mut causes);
        if !causes.is_empty() {
            return Err(causes);
        }
        let old_held = old.map(held).unwrap_or_default();
        // Allocation: first check what is asked for explicitly, then fill in the rest.
        let mut taken: Held = Held::default();
        let families = string_list(spec.get("ipFamilies"));
        let mut ips = string_list(spec.get("clusterIPs"));
        let headless = ips.first().map(String::as_str) == Some("None");
        if needs_cluster_ip(spec) && !headless {
            for (i, fam) in families.iter().enumerate() {
                match ips.get(i) {
                    Some(ip) => {
                        let parsed: IpAddr = ip.parse().expect("validated");
                        if ip_offset(parsed).is_none() {
                            causes.push(Cause::invalid(
                                format!("spec.clusterIPs[{i}]"),
                                format!("\"{ip}\""),
                                "provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/12 (IPv4) and fd00:10:96::/108 (IPv6)",
                            ));
                        } else if !old_held.ips.contains(&parsed) {
                            if self.ip_used(parsed) || taken.ips.contains(&parsed) {
                                causes.push(Cause::invalid(
                                    format!("spec.clusterIPs[{i}]"),
                                    format!("\"{ip}\""),
                                    "provided IP is already allocated",
                                ));
                            } else {
                                self.mark_ip(parsed, true);
                                taken.ips.push(parsed);
                            }
                        }
                    }
                    None => match self.allocate_ip(fam) {
                        Some(ip) => {
                            taken.ips.push(ip);
                            ips.push(ip.to_string());
                        }
                        None => causes.push(Cause::invalid(
                            format!("spec.clusterIPs[{i}]"),
                            "\"\"",
                            &format!("failed to allocate IP: range for {fam} is full"),
                        )),
                    },
                }
            }
            spec.insert("clusterIPs".into(), json!(ips));
            if let Some(first) = ips.first() {
                spec.insert("clusterIP".into(), json!(first));
            }
        }
        // Node ports.
        let wants_ports = needs_node_ports(spec);
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for (i, p) in ports.iter_mut().enumerate() {
                let given = p.get("nodePort").and_then(Value::as_u64).map(|n| n as u16);
                match given {
                    Some(n) if old_held.ports.contains(&n) || taken.ports.contains(&n) => {}
                    Some(n) if self.port_used(n) => causes.push(Cause::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        n,
                        "provided port is already allocated",
                    )),
                    Some(n) => {
                        self.mark_port(n, true);
                        taken.ports.push(n);
                    }
                    None if wants_ports => match self.allocate_port() {
                        Some(n) => {
                            taken.ports.push(n);
                            p["nodePort"] = json!(n);
                        }
                        None => causes.push(Cause::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            0,
                            "failed to allocate a nodePort: range is full",
                        )),
                    },
                    None => {}
                }
            }
        }
        let wants_hc = str_at(spec, "type") == Some("LoadBalancer")
            && str_at(spec, "externalTrafficPolicy") == Some("Local");
        if wants_hc {
            match spec
                .get("healthCheckNodePort")
                .and_then(Value::as_u64)
                .map(|n| n as u16)
            {
                Some(n) if old_held.ports.contains(&n) || taken.ports.contains(&n) => {}
                Some(n) if self.port_used(n) => causes.push(Cause::invalid(
                    "spec.healthCheckNodePort",
                    n,
                    "provided port is already allocated",
                )),
                Some(n) => {
                    self.mark_port(n, true);
                    taken.ports.push(n);
                }
                None => match self.allocate_port() {
                    Some(n) => {
                        taken.ports.push(n);
                        spec.insert("healthCheckNodePort".into(), json!(n));
                    }
                    None => causes.push(Cause::invalid(
                        "spec.healthCheckNodePort",
                        0,
                        "range is full",
                    )),
                },
            }
        }
        if !causes.is_empty() {
            for ip in taken.ips {
                self.mark_ip(ip, false);
            }
            for p in taken.ports {
                self.mark_port(p, false);
            }
            return Err(causes);
        }
        let new_held = held(svc);
        for ip in old_held.ips.iter().filter(|ip| !new_held.ips.contains(ip)) {
            self.mark_ip(*ip, false);
        }
        for p in old_held
            .ports
            .iter()
            .filter(|p| !new_held.ports.contains(p))
        {
            self.mark_port(*p, false);
        }
        if old.is_none() {
            svc["status"] = json!({"loadBalancer": {}});
        }
        Ok(())
    }
}

/// Defaulting and validation of a Service spec; allocation-free.
fn default_and_validate(
    spec: &mut Map<String, Value>,
    old: Option<&Map<String, Value>>,
    causes: &mut Vec<Cause>,
) {
    let ty = str_at(spec, "type").unwrap_or("ClusterIP").to_string();
    if !TYPES.contains(&ty.as_str()) {
        causes.push(Cause::unsupported("spec.type", &ty, TYPES));
        return;
    }
    spec.insert("type".into(), json!(ty));
    let external = ty == "NodePort" || ty == "LoadBalancer";
    let old_type = old.and_then(|o| str_at(o, "type"));

    if !spec.contains_key("sessionAffinity") {
        spec.insert("sessionAffinity".into(), json!("None"));
    }

    // Ports.
    let headless_req = str_at(spec, "clusterIP") == Some("None");
    let ports_len = spec
        .get("ports")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if ports_len == 0 && ty != "ExternalName" && !headless_req {
        causes.push(Cause::required("spec.ports", ""));
    }
    let mut seen = HashSet::new();
    let mut names = HashSet::new();
    let old_ports: Vec<Value> = old
        .and_then(|o| o.get("ports"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let old_needed_ports = old.is_some_and(needs_node_ports);
    let now_needs_ports = needs_node_ports(spec);
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for (i, p) in ports.iter_mut().enumerate() {
            let Some(pm) = p.as_object_mut() else {
                causes.push(Cause::invalid(
                    format!("spec.ports[{i}]"),
                    "",
                    "must be an object",
                ));
                continue;
            };
            let proto = str_at(pm, "protocol").unwrap_or("TCP").to_string();
            if !PROTOCOLS.contains(&proto.as_str()) {
                causes.push(Cause::unsupported(
                    format!("spec.ports[{i}].protocol"),
                    &proto,
                    PROTOCOLS,
                ));
            }
            pm.insert("protocol".into(), json!(proto));
            let port = pm.get("port").and_then(Value::as_i64).unwrap_or(0);
            if !(1..=65535).contains(&port) {
                causes.push(Cause::invalid(
                    format!("spec.ports[{i}].port"),
                    port,
                    "must be between 1 and 65535, inclusive",
                ));
            }
            if !seen.insert((port, proto.clone())) {
                causes.push(Cause::duplicate(
                    format!("spec.ports[{i}]"),
                    format!("{{\"{port}\", \"{proto}\"}}"),
                ));
            }
            let name = str_at(pm, "name").unwrap_or("").to_string();
            if ports_len > 1 && name.is_empty() {
                causes.push(Cause::required(format!("spec.ports[{i}].name"), ""));
            } else if !name.is_empty() && !names.insert(name.clone()) {
                causes.push(Cause::duplicate(
                    format!("spec.ports[{i}].name"),
                    format!("\"{name}\""),
                ));
            }
            if !pm.contains_key("targetPort") && (1..=65535).contains(&port) {
                pm.insert("targetPort".into(), json!(port));
            }
            // An update keeps the node port the old Service had on the same port and protocol.
            if !pm.contains_key("nodePort") && old_needed_ports && now_needs_ports {
                let same = old_ports.iter().find(|o| {
                    o.get("port").and_then(Value::as_i64) == Some(port)
                        && o.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == proto
                });
                if let Some(n) = same.and_then(|o| o.get("nodePort")) {
                    pm.insert("nodePort".into(), n.clone());
                }
            }
            if let Some(np) = pm.get("nodePort").and_then(Value::as_i64) {
                if !external {
                    let was = old_ports
                        .iter()
                        .any(|o| o.get("nodePort").and_then(Value::as_i64) == Some(np));
                    if was && old_type != Some(ty.as_str()) {
                        pm.remove("nodePort");
                    } else {
                        causes.push(Cause::forbidden(
                            format!("spec.ports[{i}].nodePort"),
                            &format!("may not be used when `type` is '{ty}'"),
                        ));
                    }
                } else if !(i64::from(NODE_PORT_MIN)..=i64::from(NODE_PORT_MAX)).contains(&np) {
                    causes.push(Cause::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        np,
                        "provided port is not in the valid range. The range of valid ports is 30000-32767",
                    ));
                }
            }
        }
    }

    // loadBalancerClass: only for LoadBalancer Services, and immutable while the type stays.
    let class = spec
        .get("loadBalancerClass")
        .cloned()
        .filter(|v| !v.is_null());
    if let Some(c) = &class {
        if ty != "LoadBalancer" {
            causes.push(Cause::forbidden(
                "spec.loadBalancerClass",
                "may only be used when `type` is 'LoadBalancer'",
            ));
        } else if c.as_str().is_none_or(|s| s.is_empty()) {
            causes.push(Cause::invalid(
                "spec.loadBalancerClass",
                c,
                "must be a non-empty string",
            ));
        }
    }
    if let Some(o) = old
        && old_type == Some("LoadBalancer")
        && ty == "LoadBalancer"
        && o.get("loadBalancerClass").cloned().filter(|v| !v.is_null()) != class
    {
        causes.push(Cause::invalid(
            "spec.loadBalancerClass",
            class.as_ref().map_or("null".to_string(), Value::to_string),
            "may not change once set",
        ));
    }

    if ty == "LoadBalancer" {
        if !spec.contains_key("allocateLoadBalancerNodePorts") {
            spec.insert("allocateLoadBalancerNodePorts".into(), json!(true));
        }
    } else {
        spec.remove("allocateLoadBalancerNodePorts");
        spec.remove("loadBalancerIP");
    }
    if external {
        let etp = str_at(spec, "externalTrafficPolicy")
            .unwrap_or("Cluster")
            .to_string();
        if etp != "Cluster" && etp != "Local" {
            causes.push(Cause::unsupported(
                "spec.externalTrafficPolicy",
                &etp,
                &["Cluster", "Local"],
            ));
        }
        spec.insert("externalTrafficPolicy".into(), json!(etp));
    } else {
        spec.remove("externalTrafficPolicy");
    }
    if !(ty == "LoadBalancer" && str_at(spec, "externalTrafficPolicy") == Some("Local")) {
        spec.remove("healthCheckNodePort");
    } else if !spec.contains_key("healthCheckNodePort")
        && let Some(n) = old.and_then(|o| o.get("healthCheckNodePort"))
    {
        spec.insert("healthCheckNodePort".into(), n.clone());
    }

    if ty == "ExternalName" {
        if str_at(spec, "externalName").is_none_or(str::is_empty) {
            causes.push(Cause::required("spec.externalName", ""));
        }
        for k in [
            "clusterIP",
            "clusterIPs",
            "ipFamilies",
            "ipFamilyPolicy",
            "internalTrafficPolicy",
        ] {
            spec.remove(k);
        }
        return;
    }
    if !spec.contains_key("internalTrafficPolicy") {
        spec.insert("internalTrafficPolicy".into(), json!("Cluster"));
    }

    ip_families(spec, old, causes);
}

/// clusterIP/clusterIPs/ipFamilies/ipFamilyPolicy defaulting and validation (no allocation).
fn ip_families(
    spec: &mut Map<String, Value>,
    old: Option<&Map<String, Value>>,
    causes: &mut Vec<Cause>,
) {
    let old = old.filter(|o| needs_cluster_ip(o));
    let mut cluster_ip = str_at(spec, "clusterIP").unwrap_or("").to_string();
    let mut ips = string_list(spec.get("clusterIPs"));
    let mut families = string_list(spec.get("ipFamilies"));
    let mut policy = str_at(spec, "ipFamilyPolicy").map(String::from);
    if let Some(o) = old {
        // An update that leaves the allocated values out keeps them (kubectl apply relies on it).
        if cluster_ip.is_empty() && ips.is_empty() {
            ips = string_list(o.get("clusterIPs"));
            cluster_ip = ips.first().cloned().unwrap_or_default();
        }
        if families.is_empty() {
            families = string_list(o.get("ipFamilies"));
        }
        if policy.is_none() {
            policy = str_at(o, "ipFamilyPolicy").map(String::from);
        }
    }
    if ips.is_empty() && !cluster_ip.is_empty() {
        ips = vec![cluster_ip.clone()];
    }
    if cluster_ip.is_empty() {
        cluster_ip = ips.first().cloned().unwrap_or_default();
    }
    if ips.first() != Some(&cluster_ip) && !ips.is_empty() {
        causes.push(Cause::invalid(
            "spec.clusterIPs",
            format!("{ips:?}"),
            "first value must match `clusterIP`",
        ));
        return;
    }
    let headless = cluster_ip == "None";
    if headless && ips.len() > 1 {
        causes.push(Cause::invalid(
            "spec.clusterIPs[1]",
            &ips[1],
            "must be empty when the first value is 'None'",
        ));
        return;
    }
    let mut ip_families = Vec::new();
    if !headless {
        for (i, ip) in ips.iter().enumerate() {
            match ip.parse::<IpAddr>() {
                Ok(a) => ip_families.push(family_of(&a).to_string()),
                Err(_) => {
                    causes.push(Cause::invalid(
                        format!("spec.clusterIPs[{i}]"),
                        format!("\"{ip}\""),
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                    ));
                    return;
                }
            }
        }
    }
    if ip_families.len() == 2 && ip_families[0] == ip_families[1] {
        causes.push(Cause::invalid(
            "spec.clusterIPs[1]",
            format!("\"{}\"", ips[1]),
            "may not have the same family as the first value",
        ));
        return;
    }
    for (i, f) in families.iter().enumerate() {
        if !FAMILIES.contains(&f.as_str()) {
            causes.push(Cause::unsupported(
                format!("spec.ipFamilies[{i}]"),
                f,
                FAMILIES,
            ));
            return;
        }
    }
    if families.len() > 2 || families.len() == 2 && families[0] == families[1] {
        causes.push(Cause::duplicate(
            "spec.ipFamilies[1]",
            format!("\"{}\"", families[families.len() - 1]),
        ));
        return;
    }
    for (i, f) in ip_families.iter().enumerate() {
        match families.get(i) {
            Some(g) if g != f => {
                causes.push(Cause::invalid(
                    format!("spec.ipFamilies[{i}]"),
                    format!("\"{g}\""),
                    &format!("must match the family of spec.clusterIPs[{i}] ({f})"),
                ));
                return;
            }
            Some(_) => {}
            None => families.push(f.clone()),
        }
    }
    let policy = policy.unwrap_or_else(|| {
        if families.len() == 2 || ips.len() == 2 {
            "RequireDualStack".into()
        } else {
            "SingleStack".into()
        }
    });
    if !POLICIES.contains(&policy.as_str()) {
        causes.push(Cause::unsupported("spec.ipFamilyPolicy", &policy, POLICIES));
        return;
    }
    if families.is_empty() {
        families.push("IPv4".into());
    }
    if policy == "SingleStack" {
        if families.len() > 1 {
            causes.push(Cause::invalid(
                "spec.ipFamilies",
                format!("{families:?}"),
                "when spec.ipFamilyPolicy is SingleStack only one family may be specified",
            ));
            return;
        }
    } else if families.len() == 1 {
        let other = if families[0] == "IPv4" {
            "IPv6"
        } else {
            "IPv4"
        };
        families.push(other.into());
    }
    if let Some(o) = old {
        let old_fams = string_list(o.get("ipFamilies"));
        if let (Some(a), Some(b)) = (old_fams.first(), families.first())
            && a != b
        {
            causes.push(Cause::invalid(
                "spec.ipFamilies[0]",
                format!("\"{b}\""),
                "may not change once set",
            ));
        }
        let old_ips = string_list(o.get("clusterIPs"));
        if let (Some(a), Some(b)) = (old_ips.first(), ips.first())
            && a != b
        {
            causes.push(Cause::invalid(
                "spec.clusterIPs[0]",
                format!("\"{b}\""),
                "may not change once set",
            ));
        }
        if old_ips.len() == 2 && ips.len() == 2 && old_ips[1] != ips[1] {
            causes.push(Cause::invalid(
                "spec.clusterIPs[1]",
                format!("\"{}\"", ips[1]),
                "may not change once set",
            ));
        }
        if !causes.is_empty() {
            return;
        }
    }
    if !ips.is_empty() {
        spec.insert("clusterIP".into(), json!(cluster_ip));
        spec.insert("clusterIPs".into(), json!(ips));
    } else {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    }
    spec.insert("ipFamilies".into(), json!(families));
    spec.insert("ipFamilyPolicy".into(), json!(policy));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(spec: Value) -> Value {
        json!({"metadata": {"name": "s"}, "spec": spec})
    }

    #[test]
    fn cluster_ip_service_is_defaulted() {
        let mut a = ServiceAllocator::default();
        let mut s = svc(json!({"ports": [{"port": 80}]}));
        a.admit(&mut s, None).unwrap();
        let spec = &s["spec"];
        assert_eq!(spec["type"], "ClusterIP");
        assert_eq!(spec["clusterIP"], "10.96.0.2");
        assert_eq!(spec["clusterIPs"], json!(["10.96.0.2"]));
        assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
        assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
        assert_eq!(
            spec["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        assert_eq!(s["status"], json!({"loadBalancer": {}}));
    }

    #[test]
    fn load_balancer_gets_node_ports_unless_disabled() {
        let mut a = ServiceAllocator::default();
        let mut s = svc(
            json!({"type": "LoadBalancer", "ports": [{"port": 80, "name": "a"}, {"port": 53, "protocol": "UDP", "name": "b"}]}),
        );
        a.admit(&mut s, None).unwrap();
        assert_eq!(s["spec"]["ports"][0]["nodePort"], 30000);
        assert_eq!(s["spec"]["ports"][1]["nodePort"], 30001);
        assert_eq!(s["spec"]["allocateLoadBalancerNodePorts"], true);
        assert_eq!(s["spec"]["externalTrafficPolicy"], "Cluster");
        let mut t = svc(
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}]}),
        );
        a.admit(&mut t, None).unwrap();
        assert!(t["spec"]["ports"][0].get("nodePort").is_none());
    }

    #[test]
    fn dual_stack_request_gets_both_families() {
        let mut a = ServiceAllocator::default();
        let mut s = svc(json!({"ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]}));
        a.admit(&mut s, None).unwrap();
        assert_eq!(s["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert_eq!(
            s["spec"]["clusterIPs"],
            json!(["10.96.0.2", "fd00:10:96::2"])
        );
        let mut t = svc(json!({"ipFamilies": ["IPv6"], "ports": [{"port": 80}]}));
        a.admit(&mut t, None).unwrap();
        assert_eq!(t["spec"]["clusterIP"], "fd00:10:96::3");
    }

    #[test]
    fn invalid_type_port_and_taken_ip_are_refused() {
        let mut a = ServiceAllocator::default();
        let e = a
            .admit(
                &mut svc(json!({"type": "Bogus", "ports": [{"port": 80}]})),
                None,
            )
            .unwrap_err();
        assert_eq!(e[0].field, "spec.type");
        let e = a
            .admit(&mut svc(json!({"ports": [{"port": 70000}]})), None)
            .unwrap_err();
        assert_eq!(e[0].field, "spec.ports[0].port");
        a.admit(
            &mut svc(json!({"clusterIP": "10.96.1.1", "ports": [{"port": 80}]})),
            None,
        )
        .unwrap();
        let e = a
            .admit(
                &mut svc(json!({"clusterIP": "10.96.1.1", "ports": [{"port": 80}]})),
                None,
            )
            .unwrap_err();
        assert!(e[0].message.contains("already allocated"));
    }

    #[test]
    fn load_balancer_class_is_immutable_and_update_keeps_allocations() {
        let mut a = ServiceAllocator::default();
        let mut s =
            svc(json!({"type": "LoadBalancer", "loadBalancerClass": "x", "ports": [{"port": 80}]}));
        a.admit(&mut s, None).unwrap();
        let mut changed =
            svc(json!({"type": "LoadBalancer", "loadBalancerClass": "y", "ports": [{"port": 80}]}));
        let e = a.admit(&mut changed, Some(&s)).unwrap_err();
        assert_eq!(e[0].field, "spec.loadBalancerClass");
        let mut same =
            svc(json!({"type": "LoadBalancer", "loadBalancerClass": "x", "ports": [{"port": 80}]}));
        a.admit(&mut same, Some(&s)).unwrap();
        assert_eq!(same["spec"]["clusterIP"], s["spec"]["clusterIP"]);
        assert_eq!(
            same["spec"]["ports"][0]["nodePort"],
            s["spec"]["ports"][0]["nodePort"]
        );
    }

    #[test]
    fn release_frees_addresses_and_ports() {
        let mut a = ServiceAllocator::default();
        let mut s = svc(
            json!({"type": "NodePort", "clusterIP": "10.96.0.9", "ports": [{"port": 80, "nodePort": 31000}]}),
        );
        a.admit(&mut s, None).unwrap();
        a.release(&s);
        let mut t = svc(
            json!({"type": "NodePort", "clusterIP": "10.96.0.9", "ports": [{"port": 80, "nodePort": 31000}]}),
        );
        a.admit(&mut t, None).unwrap();
    }
}
