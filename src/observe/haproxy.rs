//! HAProxy's view of the API servers: its stats page as CSV (`/stats;csv`), read with one
//! client and one parser, into typed server states.

use super::API_BACKEND;
use base64::Engine;
use serde::{Serialize, Serializer};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server's `status` column, as HAProxy 2.x writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerState {
    /// `UP`: passing its checks, taking traffic.
    Up,
    /// `UP n/m`: still UP, with n of the m failed checks that take it DOWN.
    GoingDown(u32, u32),
    /// `DOWN`: failed its checks, no traffic.
    Down,
    /// `DOWN n/m`: still DOWN, with n of the m passed checks that bring it UP.
    GoingUp(u32, u32),
    /// `MAINT`, `MAINT(via)`, `MAINT(resolution)`: put into maintenance (by hand, through the
    /// server it tracks, or because its name does not resolve).
    Maint(Maint),
    /// `DRAIN`: UP, but takes no new connections.
    Drain,
    /// `NOLB`: UP, but its check asked for no new traffic.
    NoLb,
    /// `no check`: checks are off.
    NoCheck,
    /// Anything else HAProxy writes (`DOWN (agent)`, `DRAIN n/m`, ...), verbatim.
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Maint {
    Admin,
    Via,
    Resolution,
}

fn checks(s: &str) -> Option<(u32, u32)> {
    let (n, m) = s.split_once('/')?;
    Some((n.parse().ok()?, m.parse().ok()?))
}

impl ServerState {
    pub fn parse(s: &str) -> ServerState {
        let s = s.trim();
        match s {
            "UP" => return ServerState::Up,
            "DOWN" => return ServerState::Down,
            "MAINT" => return ServerState::Maint(Maint::Admin),
            "MAINT(via)" => return ServerState::Maint(Maint::Via),
            "MAINT(resolution)" => return ServerState::Maint(Maint::Resolution),
            "DRAIN" => return ServerState::Drain,
            "NOLB" => return ServerState::NoLb,
            "no check" => return ServerState::NoCheck,
            _ => {}
        }
        if let Some((n, m)) = s.strip_prefix("UP ").and_then(checks) {
            ServerState::GoingDown(n, m)
        } else if let Some((n, m)) = s.strip_prefix("DOWN ").and_then(checks) {
            ServerState::GoingUp(n, m)
        } else {
            ServerState::Other(s.to_string())
        }
    }

    /// UP, plainly or with failing checks (`UP n/m`): it takes traffic.
    pub fn is_up(&self) -> bool {
        match self {
            ServerState::Up | ServerState::GoingDown(..) => true,
            ServerState::Other(s) => s.starts_with("UP"),
            _ => false,
        }
    }

    /// DOWN, plainly or on its way back up (`DOWN n/m`).
    pub fn is_down(&self) -> bool {
        match self {
            ServerState::Down | ServerState::GoingUp(..) => true,
            ServerState::Other(s) => s.starts_with("DOWN"),
            _ => false,
        }
    }

    /// Taken out of the backend: DOWN or in maintenance.
    pub fn is_out(&self) -> bool {
        self.is_down()
            || matches!(self, ServerState::Maint(_))
            || matches!(self, ServerState::Other(s) if s.starts_with("MAINT"))
    }
}

impl std::fmt::Display for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerState::Up => f.write_str("UP"),
            ServerState::GoingDown(n, m) => write!(f, "UP {n}/{m}"),
            ServerState::Down => f.write_str("DOWN"),
            ServerState::GoingUp(n, m) => write!(f, "DOWN {n}/{m}"),
            ServerState::Maint(Maint::Admin) => f.write_str("MAINT"),
            ServerState::Maint(Maint::Via) => f.write_str("MAINT(via)"),
            ServerState::Maint(Maint::Resolution) => f.write_str("MAINT(resolution)"),
            ServerState::Drain => f.write_str("DRAIN"),
            ServerState::NoLb => f.write_str("NOLB"),
            ServerState::NoCheck => f.write_str("no check"),
            ServerState::Other(s) => f.write_str(s),
        }
    }
}

impl From<&str> for ServerState {
    fn from(text: &str) -> ServerState {
        ServerState::parse(text)
    }
}

/// Against HAProxy's own text (`state == "UP"`), for callers written against the CSV column.
impl PartialEq<&str> for ServerState {
    fn eq(&self, text: &&str) -> bool {
        *self == ServerState::parse(text)
    }
}

/// As HAProxy writes it, so JSON consumers see the stats page's own words.
impl Serialize for ServerState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One server of the API backend, as one HAProxy rates it.
#[derive(Debug, Clone, Serialize)]
pub struct Server {
    pub server: String,
    pub status: ServerState,
    /// The last check's result (`L7OK`, `L4CON`, `L7STS`, ...).
    pub check: String,
    pub last_change_s: u64,
    /// UP to DOWN transitions since this HAProxy process started (`chkdown`): a process that
    /// just (re)started and is still rising has none.
    #[serde(default)]
    pub transitions: u64,
}

/// The servers of backend [`API_BACKEND`] in HAProxy's stats CSV. The columns are found by
/// name in the header; `pxname`, `svname` and `status` are required, the others optional.
pub fn parse_csv(csv: &str) -> Vec<Server> {
    let mut lines = csv.lines();
    let Some(header) = lines.next() else {
        return vec![];
    };
    let cols: Vec<&str> = header.trim_start_matches('#').trim().split(',').collect();
    let idx = |n: &str| cols.iter().position(|c| *c == n);
    let (Some(px), Some(sv), Some(st)) = (idx("pxname"), idx("svname"), idx("status")) else {
        return vec![];
    };
    let (lc, ck, down) = (idx("lastchg"), idx("check_status"), idx("chkdown"));
    lines
        .map(|l| l.split(',').collect::<Vec<&str>>())
        .filter(|f| {
            f.get(px) == Some(&API_BACKEND)
                && !matches!(f.get(sv), Some(&"FRONTEND" | &"BACKEND" | &"") | None)
        })
        .map(|f| {
            let text = |i: Option<usize>| i.and_then(|i| f.get(i)).copied().unwrap_or("");
            let num = |i: Option<usize>| text(i).parse().unwrap_or(0);
            Server {
                server: text(Some(sv)).to_string(),
                status: ServerState::parse(text(Some(st))),
                check: text(ck).to_string(),
                last_change_s: num(lc),
                transitions: num(down),
            }
        })
        .collect()
}

/// Why a stats page could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StatsFailure {
    /// Nothing listens on the stats port.
    Refused,
    /// No answer in time: a hung process, or a host that does not answer at all.
    TimedOut,
    /// The spec turns the stats page off, or hakube has no password for it.
    NotConfigured,
    /// Anything else: an HTTP error, a reset, an unreadable answer.
    Other,
}

/// Read one HAProxy's stats page at `addr` (HTTP basic auth) and parse its API backend.
pub async fn fetch(
    addr: SocketAddr,
    user: &str,
    password: &str,
    timeout: Duration,
) -> Result<Vec<Server>, (StatsFailure, String)> {
    let got = tokio::time::timeout(
        timeout,
        http_get(addr, "/stats;csv", Some((user, password))),
    )
    .await;
    let (code, body) = match got {
        Err(_) => {
            return Err((
                StatsFailure::TimedOut,
                format!("timed out after {} ms", timeout.as_millis()),
            ));
        }
        Ok(Err(e)) => {
            let kind = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => StatsFailure::Refused,
                std::io::ErrorKind::TimedOut => StatsFailure::TimedOut,
                _ => StatsFailure::Other,
            };
            return Err((kind, e.to_string()));
        }
        Ok(Ok(r)) => r,
    };
    if code != 200 {
        return Err((StatsFailure::Other, format!("stats page answered {code}")));
    }
    Ok(parse_csv(&body))
}

/// HTTP/1.0 GET: HAProxy closes the connection after the answer, which is read to its end.
async fn http_get(
    addr: SocketAddr,
    path: &str,
    auth: Option<(&str, &str)>,
) -> std::io::Result<(u16, String)> {
    let mut s = crate::transport::tunnel::connect(addr).await?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some((u, p)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        req.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    Ok(parse_http(&String::from_utf8_lossy(&buf)))
}

/// An HTTP answer's status code and body (0 when there is no status line).
fn parse_http(text: &str) -> (u16, String) {
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    )
}

/// Undo HTTP/1.1 chunked transfer encoding (HAProxy's stats page uses it even for HTTP/1.0).
pub(crate) fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // HAProxy 2.6.12's stats CSV on lab LBs (captured with curl; see testdata/).
    const HEALTHY: &str = include_str!("testdata/haproxy-stats-healthy.csv");
    const GOING_DOWN: &str = include_str!("testdata/haproxy-stats-server-going-down.csv");
    const DOWN: &str = include_str!("testdata/haproxy-stats-server-down.csv");
    const GOING_UP: &str = include_str!("testdata/haproxy-stats-server-going-up.csv");
    const MAINT_DRAIN: &str = include_str!("testdata/haproxy-stats-maint-drain.csv");
    const RAW_HTTP: &str = include_str!("testdata/haproxy-stats-http-raw.txt");

    fn states(csv: &str) -> Vec<(String, ServerState)> {
        parse_csv(csv)
            .into_iter()
            .map(|s| (s.server, s.status))
            .collect()
    }

    fn three(m3: ServerState) -> Vec<(String, ServerState)> {
        vec![
            ("master1".into(), ServerState::Up),
            ("master2".into(), ServerState::Up),
            ("master3".into(), m3),
        ]
    }

    #[test]
    fn a_healthy_backend_has_every_server_up_and_nothing_else() {
        let s = parse_csv(HEALTHY);
        assert_eq!(states(HEALTHY), three(ServerState::Up));
        // The stats, metrics and keepalived-track frontends and the BACKEND row are not servers.
        assert_eq!(
            (s[0].check.as_str(), s[0].last_change_s, s[0].transitions),
            ("L7OK", 20, 1)
        );
    }

    #[test]
    fn a_stopped_api_server_goes_down_then_comes_back_up() {
        // lab fault stop master3 hakube-lab-apiserver, then start.
        assert_eq!(states(GOING_DOWN), three(ServerState::GoingDown(1, 2)));
        let down = parse_csv(DOWN);
        assert_eq!(states(DOWN), three(ServerState::Down));
        assert_eq!(
            (
                down[2].check.as_str(),
                down[2].last_change_s,
                down[2].transitions
            ),
            ("L4CON", 0, 2)
        );
        assert_eq!(states(GOING_UP), three(ServerState::GoingUp(1, 2)));
        let up = ServerState::Up;
        assert!(up.is_up() && !up.is_down() && !up.is_out());
        assert!(ServerState::GoingDown(1, 2).is_up());
        assert!(ServerState::Down.is_out() && ServerState::GoingUp(1, 2).is_out());
        assert!(!ServerState::GoingUp(1, 2).is_up());
    }

    #[test]
    fn maintenance_and_drain_set_on_the_runtime_api() {
        let s = states(MAINT_DRAIN);
        assert_eq!(s[0].1, ServerState::Maint(Maint::Admin));
        assert_eq!(s[1].1, ServerState::Drain);
        assert!(s[0].1.is_out() && !s[0].1.is_up() && !s[0].1.is_down());
        assert!(!s[1].1.is_up() && !s[1].1.is_out());
    }

    #[test]
    fn states_print_as_haproxy_writes_them() {
        for text in [
            "UP",
            "UP 1/2",
            "DOWN",
            "DOWN 1/2",
            "MAINT",
            "MAINT(via)",
            "MAINT(resolution)",
            "DRAIN",
            "NOLB",
            "no check",
            "DOWN (agent)",
            "DRAIN 1/3",
        ] {
            let st = ServerState::parse(text);
            assert_eq!(st.to_string(), text);
            assert_eq!(
                serde_json::to_value(&st).expect("json"),
                serde_json::json!(text)
            );
        }
        assert_eq!(
            ServerState::parse("DOWN (agent)"),
            ServerState::Other("DOWN (agent)".into())
        );
        assert!(ServerState::parse("DOWN (agent)").is_out());
    }

    #[test]
    fn the_real_chunked_answer_is_read() {
        // `curl -0 --raw -i`: HAProxy answers chunked even to HTTP/1.0.
        let (code, body) = parse_http(RAW_HTTP);
        assert_eq!(code, 200);
        assert!(body.starts_with("# pxname,svname,"), "{body:.80}");
        assert_eq!(states(&body), three(ServerState::Up));
    }

    #[test]
    fn missing_columns() {
        assert!(parse_csv("").is_empty());
        assert!(parse_csv("# pxname,svname\nk8s-api,master1\n").is_empty());
        // Short rows and other proxies are skipped; optional columns default.
        let s = parse_csv("# pxname,svname,status\nk8s-api\nk8s-api,master1,UP\nother,x,UP\n");
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].last_change_s, s[0].check.as_str()), (0, ""));
    }
}
