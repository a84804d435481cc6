//! A DNS server on a loopback UDP port answering TXT queries from a table
//! the test fills: what an operator's resolver answers once a tenant has
//! published (or not) the record proving control of a domain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

use crate::TestResult;

/// The server's address and its records (name, without the final dot, to
/// TXT values). Stops when dropped.
pub struct DnsServer {
    pub addr: SocketAddr,
    records: Arc<Mutex<HashMap<String, Vec<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    pub async fn start() -> TestResult<DnsServer> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let records: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
        let table = records.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let answer = answer(&query, &table);
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        Ok(DnsServer {
            addr,
            records,
            task,
        })
    }

    /// Publishes a TXT record with `value` at `name`.
    pub fn publish(&self, name: &str, value: &str) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.trim_end_matches('.').to_ascii_lowercase())
            .or_default()
            .push(value.to_owned());
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(query: &Message, table: &Mutex<HashMap<String, Vec<String>>>) -> Message {
    let mut response = Message::new();
    response
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true);
    let table = table.lock().unwrap_or_else(|e| e.into_inner());
    let mut found = false;
    for q in query.queries() {
        response.add_query(q.clone());
        let name = q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if let Some(values) = table.get(&name) {
            found = true;
            if q.query_type() == RecordType::TXT {
                for value in values {
                    response.add_answer(Record::from_rdata(
                        q.name().clone(),
                        60,
                        RData::TXT(TXT::new(vec![value.clone()])),
                    ));
                }
            }
        }
    }
    if !found {
        response.set_response_code(ResponseCode::NXDomain);
    }
    response
}
