//! What the resolver knows, rebuilt from the state after every change, and
//! how it answers one query for one container: names and aliases on the
//! networks the asker shares with them (never the default `bridge`, as
//! Docker's), A and AAAA, PTR for their addresses of both families;
//! anything else is forwarded, except
//! for a container only on internal networks (Docker 26, CVE-2024-29018).

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, PTR},
    },
};

use crate::{
    engine::DEFAULT_NETWORK,
    state::{NetworkMode, Sandbox, State},
};

/// Docker's TTL for the records of its embedded DNS.
const TTL: u32 = 600;
/// The smallest UDP answer every client takes (RFC 1035).
const MIN_UDP_PAYLOAD: usize = 512;

/// A container the resolver serves, as the state describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asker {
    /// The user-defined networks it is on.
    networks: BTreeSet<String>,
    /// Whether other names are forwarded upstream: not when every network
    /// it is on is internal.
    forwards: bool,
    /// A runtime's namespace (CNI), where netd's own are found by name.
    pub netns: Option<String>,
    /// The first of its networks whose bridge carries the gateway address,
    /// and that address: where `--dns-via cgroup-hooks` sends its queries.
    pub gateway: Option<(String, Ipv4Addr)>,
}

/// Whether containers on `network` resolve each other: every network but
/// the default `bridge`, as in Docker.
pub fn has_resolver(network: &str) -> bool {
    network != DEFAULT_NETWORK
}

/// Every name and address the resolver answers for, per network.
#[derive(Default)]
pub struct Records {
    askers: HashMap<String, Asker>,
    /// Lower-case name → (network, address): container names and aliases,
    /// an entry per address (IPv4, and IPv6 on dual-stack networks).
    names: HashMap<String, Vec<(String, IpAddr)>>,
    /// Address → (network, container name).
    addresses: HashMap<IpAddr, Vec<(String, String)>>,
}

/// What to do with a query.
#[derive(Debug)]
pub enum Answer {
    Reply(Message),
    /// Not netd's to answer: to the upstream resolvers.
    Forward,
}

impl Records {
    pub fn from_state(state: &State) -> Self {
        let mut records = Records::default();
        let user_network = |name: &str| {
            has_resolver(name)
                && state
                    .networks
                    .get(name)
                    .is_some_and(|n| n.pending.is_none())
        };
        for c in state.live_containers() {
            // Docker's containers have Docker's embedded DNS.
            let runtime = matches!(c.sandbox, Sandbox::Cni { .. });
            if !(c.sandbox.is_netd() || runtime) || c.mode != NetworkMode::Bridge {
                continue;
            }
            let networks: BTreeSet<String> = c
                .attachments
                .iter()
                .map(|a| a.network.clone())
                .filter(|n| user_network(n))
                .collect();
            if networks.is_empty() {
                continue;
            }
            for a in c
                .attachments
                .iter()
                .filter(|a| networks.contains(&a.network))
            {
                // A runtime's container is known by the names it gave (its
                // record's name is netd's own).
                let own = (!runtime).then_some(&c.name);
                let names = own.into_iter().chain(&a.aliases);
                let ips: Vec<IpAddr> = std::iter::once(a.ip.into())
                    .chain(a.ip6.map(IpAddr::from))
                    .collect();
                for name in names {
                    let entry = records.names.entry(name.to_ascii_lowercase()).or_default();
                    entry.extend(ips.iter().map(|ip| (a.network.clone(), *ip)));
                }
                for ip in &ips {
                    records
                        .addresses
                        .entry(*ip)
                        .or_default()
                        .push((a.network.clone(), c.name.clone()));
                }
            }
            let forwards = networks.iter().any(|n| !state.networks[n].internal);
            let gateway = networks
                .iter()
                .map(|n| &state.networks[n])
                .find(|n| n.gateway_on_bridge())
                .map(|n| (n.name.clone(), n.gateway));
            records.askers.insert(
                c.name.clone(),
                Asker {
                    networks,
                    forwards,
                    netns: c.sandbox.runtime_netns().map(str::to_owned),
                    gateway,
                },
            );
        }
        records
    }

    /// Whether container `name` gets a resolver.
    pub fn serves(&self, name: &str) -> bool {
        self.askers.contains_key(name)
    }

    /// The runtime's namespace of container `name`, if a runtime made it.
    pub fn netns_of(&self, name: &str) -> Option<String> {
        self.askers.get(name)?.netns.clone()
    }

    /// The containers served, by name.
    pub fn askers(&self) -> impl Iterator<Item = &str> {
        self.askers.keys().map(String::as_str)
    }

    /// Where container `name`'s queries go with `--dns-via cgroup-hooks`:
    /// a network and its gateway.
    pub fn gateway_of(&self, name: &str) -> Option<&(String, Ipv4Addr)> {
        self.askers.get(name)?.gateway.as_ref()
    }

    /// The served container with address `ip` on `network` (a query that
    /// reached the resolver's socket on that network's gateway).
    pub fn asker_at(&self, network: &str, ip: Ipv4Addr) -> Option<&str> {
        self.addresses
            .get(&IpAddr::V4(ip))?
            .iter()
            .find(|(net, name)| net == network && self.askers.contains_key(name))
            .map(|(_, name)| name.as_str())
    }

    /// The answer to `query` from container `asker` (`udp`: over UDP, where
    /// an answer too large for the asker is truncated).
    pub fn answer(&self, asker: &str, query: &Message, udp: bool) -> Answer {
        let Some(who) = self.askers.get(asker) else {
            return Answer::Reply(error(query, ResponseCode::Refused));
        };
        if query.message_type() != MessageType::Query || query.op_code() != OpCode::Query {
            return Answer::Reply(error(query, ResponseCode::NotImp));
        }
        let [question] = query.queries() else {
            return Answer::Reply(error(query, ResponseCode::FormErr));
        };
        let name = question.name().to_ascii().to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        let mut reply = reply_to(query);
        match question.query_type() {
            kind @ (RecordType::A | RecordType::AAAA) => {
                let found = self.resolve(who, name);
                if found.is_empty() {
                    return self.forward(who, query);
                }
                // A known name without an address of the kind asked for
                // (AAAA on an IPv4-only network): answered empty.
                for ip in found {
                    let rdata = match (kind, ip) {
                        (RecordType::A, IpAddr::V4(ip)) => RData::A(A(ip)),
                        (RecordType::AAAA, IpAddr::V6(ip)) => RData::AAAA(AAAA(ip)),
                        _ => continue,
                    };
                    reply.add_answer(Record::from_rdata(question.name().clone(), TTL, rdata));
                }
            }
            // A container's name and an implicit MX: answered empty, never
            // forwarded.
            RecordType::MX if !self.resolve(who, name).is_empty() => {}
            RecordType::PTR => match self.reverse(who, name) {
                Some(host) => {
                    let Ok(target) = Name::from_ascii(format!("{host}.")) else {
                        return Answer::Reply(error(query, ResponseCode::ServFail));
                    };
                    reply.add_answer(Record::from_rdata(
                        question.name().clone(),
                        TTL,
                        RData::PTR(PTR(target)),
                    ));
                }
                None => return self.forward(who, query),
            },
            _ => return self.forward(who, query),
        }
        if udp {
            truncate_to(&mut reply, udp_limit(query));
        }
        Answer::Reply(reply)
    }

    fn forward(&self, who: &Asker, query: &Message) -> Answer {
        match who.forwards {
            true => Answer::Forward,
            // Docker's answer for a container with no way out.
            false => Answer::Reply(error(query, ResponseCode::ServFail)),
        }
    }

    /// The addresses of `name` (a container name or alias, or
    /// `NAME.NETWORK`) on the networks `who` is on.
    fn resolve(&self, who: &Asker, name: &str) -> Vec<IpAddr> {
        let on = |net: &str| who.networks.contains(net);
        let mut found: Vec<IpAddr> = self
            .names
            .get(name)
            .into_iter()
            .flatten()
            .filter(|(net, _)| on(net))
            .map(|(_, ip)| *ip)
            .collect();
        if found.is_empty()
            && let Some((short, net)) = name.rsplit_once('.')
            && on(net)
        {
            found = self
                .names
                .get(short)
                .into_iter()
                .flatten()
                .filter(|(n, _)| n == net)
                .map(|(_, ip)| *ip)
                .collect();
        }
        found.sort();
        found.dedup();
        found
    }

    /// `NAME.NETWORK` for a PTR query (`d.c.b.a.in-addr.arpa`, or the 32
    /// nibbles of `ip6.arpa`) about an address on a network `who` is on.
    fn reverse(&self, who: &Asker, name: &str) -> Option<String> {
        let ip = match name.strip_suffix(".in-addr.arpa") {
            Some(v4) => {
                let octets: Vec<u8> = v4
                    .split('.')
                    .rev()
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .ok()?;
                IpAddr::from(<[u8; 4]>::try_from(octets).ok()?)
            }
            None => {
                let nibbles: Vec<u8> = name
                    .strip_suffix(".ip6.arpa")?
                    .split('.')
                    .rev()
                    .map(|n| u8::from_str_radix(n, 16).ok().filter(|_| n.len() == 1))
                    .collect::<Option<_>>()?;
                let nibbles = <[u8; 32]>::try_from(nibbles).ok()?;
                let octets: [u8; 16] =
                    std::array::from_fn(|i| nibbles[2 * i] << 4 | nibbles[2 * i + 1]);
                IpAddr::from(octets)
            }
        };
        self.addresses
            .get(&ip)?
            .iter()
            .find(|(net, _)| who.networks.contains(net))
            .map(|(net, container)| format!("{container}.{net}"))
    }
}

/// An answer to `query` with nothing in it yet.
fn reply_to(query: &Message) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_queries(query.queries().iter().cloned());
    reply
}

/// An error answer carrying the query's ID and question.
pub fn error(query: &Message, code: ResponseCode) -> Message {
    let mut reply = reply_to(query);
    reply.set_response_code(code);
    reply
}

/// What the asker takes over UDP: its EDNS payload size, at least 512.
fn udp_limit(query: &Message) -> usize {
    query
        .extensions()
        .as_ref()
        .map_or(MIN_UDP_PAYLOAD, |edns| usize::from(edns.max_payload()))
        .max(MIN_UDP_PAYLOAD)
}

/// Drops answers until the message fits in `limit` bytes, flagging it
/// truncated so the asker retries over TCP.
fn truncate_to(reply: &mut Message, limit: usize) {
    // Most answers are far below the limit: an upper bound (no name
    // compression, no EDNS in our answers) spares encoding them twice.
    let name = reply
        .queries()
        .first()
        .map_or(255, |q| q.name().to_ascii().len() + 2);
    // An A record is the name and 14 bytes, an AAAA one 26.
    let bound = 12 + name + 4 + reply.answers().len() * (name + 26);
    if bound <= limit {
        return;
    }
    let size = |m: &Message| m.to_vec().map_or(usize::MAX, |b| b.len());
    if size(reply) <= limit {
        return;
    }
    reply.set_truncated(true);
    while size(reply) > limit && !reply.answers().is_empty() {
        reply.answers_mut().pop();
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::state::{Attachment, Container, Network};
    use hickory_proto::op::{Edns, Query};

    fn network(name: &str, subnet: &str, internal: bool) -> Network {
        Network {
            internal,
            ..Network::for_tests(name, 1, subnet, &format!("br-{name}"))
        }
    }

    pub(in crate::dns) fn container(name: &str, on: &[(&str, &str, &[&str])]) -> Container {
        Container {
            name: name.into(),
            mode: NetworkMode::Bridge,
            attachments: on
                .iter()
                .map(|(net, ip, aliases)| Attachment {
                    network: (*net).into(),
                    ip: ip.parse().unwrap(),
                    ip6: None,
                    mac: String::new(),
                    ifname: "eth0".into(),
                    host_veth: format!("veth-{name}"),
                    aliases: aliases.iter().map(|a| (*a).into()).collect(),
                    gw_priority: 0,
                })
                .collect(),
            ports: Vec::new(),
            pending: None,
            pending_links: Vec::new(),
            sandbox: Sandbox::Netd,
        }
    }

    /// web and db on `front`, db and worker on the internal `back`, plain
    /// on the default bridge.
    pub(in crate::dns) fn state() -> State {
        let mut state = State::default();
        for net in [
            network("bridge", "172.17.0.0/16", false),
            network("front", "10.1.0.0/24", false),
            network("back", "10.2.0.0/24", true),
        ] {
            state.networks.insert(net.name.clone(), net);
        }
        for c in [
            container("web", &[("front", "10.1.0.2", &[])]),
            container(
                "db",
                &[
                    ("front", "10.1.0.3", &["database"]),
                    ("back", "10.2.0.3", &[]),
                ],
            ),
            container("worker", &[("back", "10.2.0.4", &[])]),
            container("plain", &[("bridge", "172.17.0.2", &[])]),
        ] {
            state.containers.insert(c.name.clone(), c);
        }
        state
    }

    #[test]
    fn steered_askers_go_to_a_gateway_and_are_known_by_their_address_there() {
        let records = Records::from_state(&state());
        // db is on front and back: the first network with a gateway.
        assert_eq!(
            records.gateway_of("db"),
            Some(&("back".to_owned(), "10.2.0.1".parse().unwrap()))
        );
        assert_eq!(records.gateway_of("plain"), None, "no resolver on bridge");
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(records.asker_at("front", ip("10.1.0.3")), Some("db"));
        assert_eq!(records.asker_at("back", ip("10.2.0.3")), Some("db"));
        assert_eq!(
            records.asker_at("back", ip("10.1.0.3")),
            None,
            "wrong network"
        );
        assert_eq!(
            records.asker_at("bridge", ip("172.17.0.2")),
            None,
            "not served"
        );
    }

    #[test]
    fn isolated_networks_have_no_gateway_to_steer_to() {
        let mut state = state();
        state.networks.get_mut("back").unwrap().gateway_mode_ipv4 =
            crate::state::GatewayMode::Isolated;
        let records = Records::from_state(&state);
        assert_eq!(records.gateway_of("worker"), None, "only on back");
        assert_eq!(
            records.gateway_of("db"),
            Some(&("front".to_owned(), "10.1.0.1".parse().unwrap()))
        );
    }

    pub(in crate::dns) fn ask(
        records: &Records,
        asker: &str,
        name: &str,
        kind: RecordType,
    ) -> Answer {
        let mut query = Message::new();
        query
            .set_id(7)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        records.answer(asker, &query, true)
    }

    /// The reply of an answer that must not be a forward.
    fn replied(answer: Answer) -> Message {
        match answer {
            Answer::Reply(reply) => reply,
            Answer::Forward => panic!("forwarded"),
        }
    }

    pub(in crate::dns) fn addresses(answer: Answer) -> Vec<String> {
        let reply = replied(answer);
        assert_eq!(reply.id(), 7);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        reply
            .answers()
            .iter()
            .map(|r| r.data().to_string())
            .collect()
    }

    #[test]
    fn names_resolve_on_shared_networks_only() {
        let r = Records::from_state(&state());
        assert_eq!(
            addresses(ask(&r, "web", "db.", RecordType::A)),
            ["10.1.0.3"]
        );
        assert_eq!(
            addresses(ask(&r, "web", "DataBase", RecordType::A)),
            ["10.1.0.3"]
        );
        assert_eq!(
            addresses(ask(&r, "web", "db.front", RecordType::A)),
            ["10.1.0.3"]
        );
        assert_eq!(
            addresses(ask(&r, "worker", "db", RecordType::A)),
            ["10.2.0.3"]
        );
        // Both networks shared: both addresses.
        assert_eq!(
            addresses(ask(&r, "db", "db", RecordType::A)),
            ["10.1.0.3", "10.2.0.3"]
        );
        // Not shared: forwarded (web), refused a way out (worker, internal).
        assert!(matches!(
            ask(&r, "web", "worker", RecordType::A),
            Answer::Forward
        ));
        let reply = replied(ask(&r, "worker", "web", RecordType::A));
        assert_eq!(reply.response_code(), ResponseCode::ServFail);
        // The default bridge has no names, and its containers no resolver.
        assert!(matches!(
            ask(&r, "web", "plain", RecordType::A),
            Answer::Forward
        ));
        assert_eq!(r.askers().filter(|a| *a == "plain").count(), 0);
        // A known name has no IPv6 address: empty, not forwarded.
        assert!(addresses(ask(&r, "web", "db", RecordType::AAAA)).is_empty());
        assert!(matches!(
            ask(&r, "web", "example.com", RecordType::AAAA),
            Answer::Forward
        ));
    }

    #[test]
    fn addresses_resolve_back_to_name_dot_network() {
        let r = Records::from_state(&state());
        assert_eq!(
            addresses(ask(&r, "web", "3.0.1.10.in-addr.arpa.", RecordType::PTR)),
            ["db.front."]
        );
        assert!(matches!(
            ask(&r, "web", "3.0.2.10.in-addr.arpa.", RecordType::PTR),
            Answer::Forward
        ));
    }

    #[test]
    fn bad_queries_get_error_codes() {
        let r = Records::from_state(&state());
        let mut two = Message::new();
        two.set_id(9)
            .add_query(Query::query(Name::from_ascii("a.").unwrap(), RecordType::A))
            .add_query(Query::query(Name::from_ascii("b.").unwrap(), RecordType::A));
        let reply = replied(r.answer("web", &two, true));
        assert_eq!(reply.response_code(), ResponseCode::FormErr);
        let mut update = Message::new();
        update.set_op_code(OpCode::Update);
        let reply = replied(r.answer("web", &update, true));
        assert_eq!(reply.response_code(), ResponseCode::NotImp);
    }

    #[test]
    fn large_udp_answers_are_truncated() {
        let mut state = state();
        for i in 0..60 {
            let name = format!("many{i}");
            let ip = format!("10.1.0.{}", 10 + i);
            state
                .containers
                .insert(name.clone(), container(&name, &[("front", &ip, &["pool"])]));
        }
        let r = Records::from_state(&state);
        let reply = replied(ask(&r, "web", "pool", RecordType::A));
        assert!(reply.truncated());
        assert!(reply.to_vec().unwrap().len() <= MIN_UDP_PAYLOAD);
        // With EDNS room for all of them, or over TCP, nothing is cut.
        let mut query = Message::new();
        query.add_query(Query::query(
            Name::from_ascii("pool").unwrap(),
            RecordType::A,
        ));
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        query.set_edns(edns);
        let reply = replied(r.answer("web", &query, true));
        assert_eq!((reply.truncated(), reply.answers().len()), (false, 60));
        query.set_edns(Edns::new());
        let reply = replied(r.answer("web", &query, false));
        assert_eq!(reply.answers().len(), 60);
    }
}
